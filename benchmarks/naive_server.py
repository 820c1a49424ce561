"""The baseline a user would write by hand: one process, FastAPI, transformers'
zero-shot pipeline and get_*_features, one request at a time per thread, no batching across
requests, no caching. It serves the same routes and shapes as the graph, for the benchmark.

    python -m benchmarks.naive_server --model checkpoints/base --port 8100
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from transformers import AutoModel, AutoProcessor, pipeline
from transformers.image_utils import load_image

from deployments.protocol import ClassifyRequest, EmbeddingRequest, ImageItem, RerankRequest, TextItem


def build(model_path: str) -> FastAPI:
    app = FastAPI()
    model = AutoModel.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    classifier = pipeline("zero-shot-image-classification", model=model_path)

    def image_of(item) -> str | None:
        return item.image if isinstance(item, ImageItem) else None

    @torch.no_grad()
    def features(items) -> torch.Tensor:
        rows = []
        for item in items:
            if image_of(item) is not None:
                inputs = processor(images=load_image(image_of(item)), return_tensors="pt")
                rows.append(model.get_image_features(**inputs).pooler_output)
            else:
                text = item.text if isinstance(item, TextItem) else item
                inputs = processor(text=[text], padding="max_length", truncation=True, return_tensors="pt")
                rows.append(model.get_text_features(**inputs).pooler_output)
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1)

    @app.post("/v1/classify")
    def classify(body: ClassifyRequest):
        data = []
        for index, item in enumerate(body.input):
            image = load_image(item.image if isinstance(item, ImageItem) else item)
            predictions = classifier(image, candidate_labels=body.labels,
                                     hypothesis_template=body.hypothesis_template)
            data.append({"index": index, "prediction": predictions[0]["label"],
                         "score": predictions[0]["score"], "predictions": predictions})
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingRequest):
        items = [body.input] if isinstance(body.input, str) else body.input
        vectors = features(items)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                                           for i, v in enumerate(vectors)]}

    @app.post("/v1/rerank")
    def rerank(body: RerankRequest):
        vectors = features([body.query] + body.documents)
        logits = vectors[1:] @ vectors[0] * model.logit_scale.exp() + model.logit_bias
        scores = torch.sigmoid(logits).tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:body.top_n]
        return {"results": [{"index": i, "relevance_score": scores[i]} for i in order]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
