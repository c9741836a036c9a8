"""Next-token logits and greedy continuations from the merged model and each exported format,
for the parity gate. Each runner is loaded once and closed when done."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """What the parity gate needs from an exported model."""

    def logits(self, ids: list[int]) -> np.ndarray: ...
    def continue_greedy(self, ids: list[int], max_new_tokens: int) -> str: ...
    def close(self) -> None: ...


class HFRunner:
    """The merged checkpoint in its own dtype (bf16 for Phi-3: 7.6 GB at Phi-3-mini size, half of
    float32's 15.3 GB): the reference. Logits are compared in float32."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
        self.stop_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True).input_ids)

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def continue_greedy(self, ids: list[int], max_new_tokens: int) -> str:
        with self.torch.no_grad():
            tensor = self.torch.tensor([ids])
            out = self.model.generate(tensor, attention_mask=self.torch.ones_like(tensor),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[-1])
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()


def is_end_of_generation(llm: Any, token: int) -> bool:
    """llama.cpp's own verdict (its vocabulary marks Phi-3's <|end|> and <|endoftext|> as EOG)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


class LlamaCppRunner:
    """A GGUF file in llama-cpp-python, logits for every prompt position."""

    def __init__(self, gguf: Path, n_ctx: int = 2048) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=True, verbose=False)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def continue_greedy(self, ids: list[int], max_new_tokens: int) -> str:
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if is_end_of_generation(self.llm, token):
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
        return self.llm.detokenize(out).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.llm.close()


class OnnxGenaiRunner:
    """An onnxruntime-genai model folder; logits position by position through the KV cache."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))
        self.tokenizer = og.Tokenizer(self.model)

    def _generator(self, max_length: int) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def logits(self, ids: list[int]) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        rows = []
        for token in ids:
            gen.append_tokens([token])
            rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def continue_greedy(self, ids: list[int], max_new_tokens: int) -> str:
        gen = self._generator(len(ids) + max_new_tokens)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
        new = gen.get_sequence(0)[len(ids):]
        # onnxruntime-genai 0.15's decode dies with SIGFPE on an empty sequence (an answer that is
        # only the stop token): never call it with one.
        return self.tokenizer.decode(new) if len(new) else ""

    def close(self) -> None:
        del self.model
