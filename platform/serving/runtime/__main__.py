"""python -m serving.runtime --model-source '{"format": "gguf", ...}' --served-model-name NAME [...]"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from catalog.loader.dtypes import DTYPES
from serving.runtime.serve import DECODERS, serve


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.runtime", description=__doc__)
    parser.add_argument("--model-source", required=True, help="JSON source spec of the base model (see catalog.loader)")
    parser.add_argument("--served-model-name", required=True, help="The model id clients ask for")
    parser.add_argument(
        "--task", default="generate", choices=["generate", "embed"], help="Chat and completions, or embeddings"
    )
    parser.add_argument("--cache-dir", default=os.environ.get("MODEL_CACHE_DIR", "var/models"))
    parser.add_argument("--adapter-root", default=None, help="Only adapters under this directory can be loaded")
    parser.add_argument("--max-loras", type=int, default=8, help="Adapters kept loaded (least recently used leave)")
    parser.add_argument("--max-batch", type=int, default=32, help="Rows decoded together")
    parser.add_argument(
        "--prompt-cache-bytes",
        type=int,
        default=256 << 20,
        help="Memory for the keys and values of recent prompts, reused by prompts that start the same way (0: off)",
    )
    parser.add_argument(
        "--batch-rows-with-interactive",
        type=int,
        default=0,
        help="Batch API rows kept decoding beside interactive ones (0: they wait while any interactive row runs; "
        "on a CPU every row slows the others' steps, on a GPU a few cost the others little)",
    )
    parser.add_argument("--max-model-len", type=int, default=None, help="Context length (default: the model's)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["auto", *DTYPES],
        help="The weights' type; auto: bfloat16 where the CPU or GPU computes in it natively, else float32",
    )
    parser.add_argument(
        "--decoder",
        default="auto",
        choices=DECODERS,
        help="native: the runtime's own forward pass for Llama-family models, reading a GGUF's weight blocks "
        "as the file holds them in decode steps (serving/runtime/native); transformers: transformers' forward "
        "pass, for any model; auto: native where it runs the model",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chat-template", default=None, help="A file with a Jinja chat template to use instead")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MAAS_RUNTIME_API_KEY"),
        help="Shared secret required on /v1/*; adapter administration needs it (env MAAS_RUNTIME_API_KEY)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars are noise in a server log

    from catalog.loader import load_model
    from serving.runtime import runners
    from serving.runtime.adapters import AdapterManager
    from serving.runtime.app import RuntimeState, build_app
    from serving.runtime.engine import Engine
    from serving.runtime.grammars import Grammars

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "embed":
        return serve_embeddings(args)
    template = Path(args.chat_template).read_text() if args.chat_template else None
    loaded = load_model(
        json.loads(args.model_source),
        Path(args.cache_dir),
        dtype=args.dtype,
        device=args.device,
        chat_template=template,
    )
    max_len = args.max_model_len or getattr(loaded.model.config, "max_position_embeddings", 2048)
    adapters = AdapterManager(loaded.model, Path(args.adapter_root) if args.adapter_root else None, args.max_loras)
    runner = runners.for_loaded(loaded, adapters, Path(args.cache_dir), max_len=max_len, decoder=args.decoder)
    logging.getLogger("serving.runtime").info(
        "loaded %s in %s in %.1fs (from cache: %s); %s",
        args.served_model_name,
        str(loaded.model.dtype).removeprefix("torch."),
        loaded.seconds,
        loaded.from_cache,
        runner.describe(),
    )
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        adapters,
        max_batch=args.max_batch,
        max_model_len=max_len,
        batch_rows_with_interactive=args.batch_rows_with_interactive,
        prompt_cache_bytes=args.prompt_cache_bytes,
        runner=runner,
    )
    state = RuntimeState(
        engine=engine,
        served_model=args.served_model_name,
        api_key=args.api_key,
        max_model_len=max_len,
        grammars=Grammars(loaded.tokenizer, loaded.model.config.vocab_size, engine.eos_ids),
    )
    serve(build_app(state), engine, host=args.host, port=args.port)


def serve_embeddings(args: argparse.Namespace) -> None:
    from catalog.loader import load_encoder
    from serving.runtime.embedder import Embedder, max_length_of, read_pooling
    from serving.runtime.embedding_app import EmbeddingState, build_embedding_app

    loaded = load_encoder(json.loads(args.model_source), dtype=args.dtype, device=args.device)
    logging.getLogger("serving.runtime").info("loaded %s in %.1fs", args.served_model_name, loaded.seconds)
    max_length = min(args.max_model_len or 10**9, max_length_of(loaded.weights_dir, loaded.model))
    embedder = Embedder(loaded.model, loaded.tokenizer, read_pooling(loaded.weights_dir), max_length=max_length)
    state = EmbeddingState(embedder=embedder, served_model=args.served_model_name, api_key=args.api_key)
    serve(build_embedding_app(state), embedder, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
