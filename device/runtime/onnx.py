"""onnxruntime-genai running an ONNX int4 model folder."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

from phibox.device.runtime.backend import (
    UnsupportedOptionError,
    check_control_tokens,
    check_fit,
    clean_piece,
    control_ids,
)


class OnnxGenaiBackend:
    """An onnxruntime-genai model folder; one live generator rewound to the shared prefix."""

    name = "onnx"

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        # The default session options used one core on a 2-core box (measured): set the threads.
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((model_dir / "genai_config.json").read_text())
        self.context_window = int(genai["model"]["context_length"])
        self.generator = None
        self.tokens: list[int] = []
        self.control = control_ids(self.tokenize)

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _start(self, tokens: list[int], temperature: float, reuse_prefix: bool, min_new_tokens: int = 0) -> None:
        common = 0
        if reuse_prefix and self.generator is not None and temperature == 0:
            while common < min(len(tokens) - 1, len(self.tokens)) and tokens[common] == self.tokens[common]:
                common += 1
        if common > 0:
            self.generator.rewind_to(common)
        else:
            params = self.og.GeneratorParams(self.model)
            options = {"max_length": self.context_window, "do_sample": temperature > 0}
            if min_new_tokens:  # a fresh generator: min_length counts the prompt too
                options["min_length"] = len(tokens) + min_new_tokens
            if temperature > 0:
                options.update(temperature=temperature, top_k=40)
            params.set_search_options(**options)
            self.generator = self.og.Generator(self.model, params)
        self.generator.append_tokens(tokens[common:])
        self.tokens = list(tokens)

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        if logit_bias:
            raise UnsupportedOptionError("logit_bias is not supported by the onnx backend; use the gguf one")
        tokens = self.tokenize(prompt)
        check_control_tokens(tokens, self.control, prompt)
        check_fit(len(tokens), max_new_tokens, self.context_window)
        self._start(tokens, temperature, reuse_prefix and min_new_tokens == 0, min_new_tokens)
        stream = self.tokenizer.create_stream()
        for _ in range(max_new_tokens):
            if (cancel is not None and cancel.is_set()) or self.generator.is_done():
                break
            self.generator.generate_next_token()
            if self.generator.is_done():  # stopped on <|end|> or <|endoftext|>, which is not emitted
                break
            token = int(self.generator.get_next_tokens()[0])
            self.tokens.append(token)
            piece, stop = clean_piece(stream.decode(token))
            if stop:
                break
            yield piece  # one item per token, "" while a character is incomplete

    def close(self) -> None:
        self.generator = None
        del self.model
