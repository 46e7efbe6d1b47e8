"""The service a user would write without thermoml: FastAPI + `model.predict` per request."""

from __future__ import annotations

import sys

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

folder = sys.argv[2]
encoder = keras.models.load_model(f"{folder}/encoder.keras", compile=False)
decoder = keras.models.load_model(f"{folder}/decoder.keras", compile=False)
app = FastAPI()


class Rows(BaseModel):
    inputs: list[list[float]]


@app.post("/score")
def score(body: Rows) -> dict[str, list[float]]:
    x = np.asarray(body.inputs, dtype=np.float32)
    reconstruction = decoder.predict(encoder.predict(x, verbose=0), verbose=0)
    return {"scores": np.mean((x - reconstruction) ** 2, axis=1).tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
