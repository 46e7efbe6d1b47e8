# syntax=docker/dockerfile:1
# thermoml: one image for the API, the workers and the one-shot migration.
#   docker build -t thermoml .                       # CPU
#   docker build -t thermoml-gpu --build-arg EXTRAS=gpu .   # adds tensorflow[and-cuda]
FROM python:3.11-slim

# Comma-separated extras of the `thermoml` distribution to install, e.g. "gpu".
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    THERMOML_DATA_DIR=/var/lib/thermoml

WORKDIR /opt/thermoml

# Dependencies first, in their own layer (TensorFlow alone is ~600 MB), so that a change to the
# code does not download them again. The list is read from pyproject.toml, the only place it lives.
COPY pyproject.toml README.md ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [e.strip() for e in sys.argv[1].split(',') if e.strip()]; print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY service ./service
COPY workers ./workers
COPY ml ./ml
COPY migrations ./migrations
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# An unprivileged user; its data directory is the mount point of the compose volume, so the
# volume is created owned by this user.
RUN useradd --create-home --uid 10001 --user-group thermoml \
    && mkdir -p /var/lib/thermoml \
    && chown thermoml:thermoml /var/lib/thermoml
USER thermoml
WORKDIR /var/lib/thermoml

EXPOSE 8000
CMD ["thermoml", "api", "--host", "0.0.0.0"]
