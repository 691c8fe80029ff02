"""Runs one vLLM engine process for the engine tests and prints what it produced as JSON (last line).

    python engine_run.py JOB.json

JOB.json:
    {"model": DIR, "connector": "tw" | "example" | null, "mount": MOUNT, "extra": {...extra config},
     "example_path": DIR, "block_size": 32, "max_model_len": 4096, "kv_cache_mib": 64,
     "max_num_batched_tokens": 512, "enable_prefix_caching": true,
     "batches": [[{"prompt": [token ids], "max_tokens": 8, "logprobs": 5}, ...], ...],
     "chats": [{"system": TEXT, "turns": [USER TEXT, ...], "max_tokens": 8}, ...]}

Each batch is one LLM.generate call (greedy); batches run in order in this one engine. Output:
    {"pid": ..., "results": [[{"tokens": [...], "logprobs": [{"id": logprob, ...} per token],
      "num_cached_tokens": N, "kv": kv_transfer_params}, ...], ...],
     "chats": [[{"text": answer, "tokens": [...]} per turn], ...], "counters": {...}}
Chats run turn by turn through LLM.chat (the model's chat template), each answer appended to the next turn.
where counters sums every TokenWarehouseConnector of this process (scheduler and worker), after the queued
saves were written.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def build_llm(job: dict):
    from vllm import LLM

    kw = dict(model=job["model"], dtype="float32", enforce_eager=True, block_size=job.get("block_size", 32),
              max_model_len=job.get("max_model_len", 4096),
              kv_cache_memory_bytes=int(job.get("kv_cache_mib", 64)) << 20,
              enable_prefix_caching=job.get("enable_prefix_caching", True), seed=0)
    if job.get("max_num_batched_tokens"):
        kw["max_num_batched_tokens"] = job["max_num_batched_tokens"]
    if job.get("max_num_seqs"):
        kw["max_num_seqs"] = job["max_num_seqs"]
    conn = job.get("connector")
    if conn == "tw":
        kw["kv_transfer_config"] = {
            "kv_connector": "TokenWarehouseConnector", "kv_connector_module_path": "tokenwarehouse.vllm",
            "kv_role": "kv_both", "kv_connector_extra_config": {"mount": job["mount"], **job.get("extra", {})}}
    elif conn == "example":
        kw["kv_transfer_config"] = {
            "kv_connector": "ExampleConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": job["example_path"]}}
    return LLM(**kw)


def output_record(o) -> dict:
    c = o.outputs[0]
    lps = []
    for step in c.logprobs or []:
        lps.append({str(tok): lp.logprob for tok, lp in step.items()})
    return {"tokens": list(c.token_ids), "logprobs": lps, "num_cached_tokens": o.num_cached_tokens,
            "kv": getattr(o, "kv_transfer_params", None)}


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.monotonic()
    llm = build_llm(job)
    startup = time.monotonic() - t0
    results = []
    for batch in job["batches"]:
        prompts = [TokensPrompt(prompt_token_ids=list(r["prompt"])) for r in batch]
        params = [SamplingParams(max_tokens=r.get("max_tokens", 8), temperature=0.0,
                                 logprobs=r.get("logprobs", 5), ignore_eos=True) for r in batch]
        outs = llm.generate(prompts, params, use_tqdm=False)
        results.append([output_record(o) for o in outs])
    chats = []
    for chat in job.get("chats", []):
        messages = [{"role": "system", "content": chat["system"]}]
        answers = []
        for user in chat["turns"]:
            messages.append({"role": "user", "content": user})
            sp = SamplingParams(max_tokens=chat.get("max_tokens", 8), temperature=0.0, ignore_eos=True)
            out = llm.chat([messages], sp, use_tqdm=False)[0].outputs[0]
            answers.append({"text": out.text, "tokens": list(out.token_ids)})
            messages.append({"role": "assistant", "content": out.text})
        chats.append(answers)
    counters = {}
    if job.get("connector") == "tw":
        import tokenwarehouse.vllm as twv
        assert twv.wait_for_saves(timeout=120), "queued saves not written within 120 s"
        counters = twv.counters()
    print(json.dumps({"pid": os.getpid(), "startup_s": startup, "results": results, "chats": chats,
                      "counters": counters}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
