"""Save the experts a running vLLM server routes each request to, for `routelens import vllm`.

Start the server with `vllm serve MODEL --enable-return-routed-experts`, then:
    python docs/vllm_routed_experts_client.py prompts.txt routed_experts.jsonl [http://localhost:8000]
Each prompt (one per line) is sent to /v1/completions; each line of the output holds what vLLM 0.34
returns per choice: prompt_token_ids, token_ids and routed_experts (base64 .npy [tokens - 1, layers, k]).
"""
import json
import sys
import urllib.request

prompts, out_path = sys.argv[1], sys.argv[2]
url = (sys.argv[3] if len(sys.argv) > 3 else "http://localhost:8000").rstrip("/") + "/v1/completions"
model = json.load(urllib.request.urlopen(url.replace("/completions", "/models")))["data"][0]["id"]
with open(prompts, encoding="utf-8") as lines, open(out_path, "w", encoding="utf-8") as out:
    for prompt in filter(str.strip, lines):
        body = {"model": model, "prompt": prompt.rstrip("\n"), "max_tokens": 128, "return_token_ids": True}
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        for choice in json.load(urllib.request.urlopen(request))["choices"]:
            keep = ("prompt_token_ids", "token_ids", "routed_experts")
            out.write(json.dumps({key: choice.get(key) for key in keep}) + "\n")
