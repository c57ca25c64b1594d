import asyncio
import kubernetes
import pytest
from tests.controller.harness import running_operator, wait_for

async def test_invalid(kube, api):
    objs = kubernetes.client.CustomObjectsApi(api)
    body = {"apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection", "metadata": {"name": "bad"},
            "spec": {"model": {"source": "tiny:llama-demo"}, "data": {"train": "train.jsonl", "validation": [{"uri": "v.jsonl", "task": "t"}]},
                     "selection": {"budget": 0}}}
    await asyncio.to_thread(objs.create_namespaced_custom_object, "dsel.dev", "v1alpha1", "default", "dataselections", body)
    async with running_operator() as op:
        def phase():
            got = kube.live_objects("dsel.dev/v1alpha1/dataselections")
            return got and got[0].get("status", {}).get("phase") == "Failed" and got[0]
        obj = await wait_for(phase, 20)
        print(obj["status"])
