"""Run by tests/test_appliance.py with the appliance's llama.cpp, natively or under an emulated CPU
(qemu-user): load the CPU backend, generate greedily from a GGUF, print JSON on the last line.

    python appliance_generate.py MODEL.gguf [--wx]

--wx first turns on the kernel's W^X switch (PR_SET_MDWE, what MemoryDenyWriteExecute=yes sets);
exit 77 when the kernel has none.
"""

from __future__ import annotations

import ctypes
import json
import sys

if "--wx" in sys.argv and ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)

from llama_cpp import Llama  # after the W^X switch: the libraries load under it

from phibox.device.runtime.cpu_backends import ensure_cpu_backend

backend = ensure_cpu_backend()
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
out = llm.create_completion("<|user|>\nWhat does E42 mean?<|end|>\n<|assistant|>\n", max_tokens=12, temperature=0)
print(json.dumps({"portable": backend.portable, "variant": backend.variant, "text": out["choices"][0]["text"],
                  "tokens": out["usage"]["completion_tokens"]}))
