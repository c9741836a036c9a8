"""Run by tests/test_appliance.py with the appliance's llama.cpp, natively or under an emulated CPU
(qemu-user): load the CPU backend, generate greedily from a GGUF, print JSON on the last line.

    python appliance_generate.py MODEL.gguf
"""

from __future__ import annotations

import json
import sys

from llama_cpp import Llama

from phibox.device.runtime.cpu_backends import ensure_cpu_backend

backend = ensure_cpu_backend()
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
out = llm.create_completion("<|user|>\nWhat does E42 mean?<|end|>\n<|assistant|>\n", max_tokens=12, temperature=0)
print(json.dumps({"portable": backend.portable, "variant": backend.variant, "text": out["choices"][0]["text"],
                  "tokens": out["usage"]["completion_tokens"]}))
