"""The snippets of LiteLLM's batch page, as its readers copy them, with only the import changed.

Each runs as a script against the emulator (``from litellm import`` -> ``from asyncbatch import``). Where the page
itself is wrong, the README shows the one line each needs, and so does this test, nothing more: the "Complete
Workflow" reads a ``results.jsonl`` it never downloads (one ``batch_completion_results`` line), and its error
check ``"error" in result`` is true for every OpenAI output line, which carries ``"error": null`` (one line:
``if result.get("error"):``). ``batch_abc123`` is the page's placeholder for a batch id: it becomes the provider
batch id (``batch_...``) of a batch made earlier, as LiteLLM users keep them. The page polls every 60 seconds;
``time.sleep`` is shortened in these scripts (a ``sitecustomize``), never their text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncbatch.emulator import EmulatorConfig, EmulatorThread
from tests.helpers import API_KEY

QUICK_START = '''
from litellm import batch_completion

# Create batch
batch = batch_completion(
    model="gpt-4o",
    messages=[
        [{"role": "user", "content": "What is AI?"}],
        [{"role": "user", "content": "What is ML?"}],
        [{"role": "user", "content": "What is DL?"}]
    ]
)

print(f"Batch ID: {batch.id}")
print(f"Status: {batch.status}")
'''

OPENAI_BATCH_API = '''
from litellm import batch_completion_create
import json

# Prepare requests
requests = [
    {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "What is AI?"}],
            "max_tokens": 100
        }
    },
    {
        "custom_id": "request-2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "What is ML?"}],
            "max_tokens": 100
        }
    }
]

# Save to file
with open("batch_requests.jsonl", "w") as f:
    for req in requests:
        f.write(json.dumps(req) + "\\n")

# Create batch
batch = batch_completion_create(
    input_file_path="batch_requests.jsonl",
    endpoint="/v1/chat/completions",
    completion_window="24h"
)

print(f"Batch ID: {batch.id}")
'''

ANTHROPIC_BATCH_API = '''
from litellm import batch_completion

# Create batch for Claude
batch = batch_completion(
    model="anthropic/claude-3.5-sonnet",
    messages=[
        [{"role": "user", "content": "Analyze this text..."}],
        [{"role": "user", "content": "Summarize this..."}],
        [{"role": "user", "content": "Translate this..."}]
    ]
)

print(f"Batch ID: {batch.id}")
'''

COMPLETE_WORKFLOW = '''
from litellm import (
    batch_completion_create,
    batch_completion_retrieve,
    batch_completion_list
)
import json
import time

# 1. Prepare batch requests
requests = [
    {
        "custom_id": f"task-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Task {i}"}]
        }
    }
    for i in range(100)
]

# Save to JSONL
with open("requests.jsonl", "w") as f:
    for req in requests:
        f.write(json.dumps(req) + "\\n")

# 2. Create batch
batch = batch_completion_create(
    input_file_path="requests.jsonl",
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"project": "my-project"}
)

print(f"Created batch: {batch.id}")

# 3. Poll for completion
while True:
    batch = batch_completion_retrieve(batch_id=batch.id)
    print(f"Status: {batch.status}")

    if batch.status in ["completed", "failed", "expired", "cancelled"]:
        break

    time.sleep(60)  # Check every minute

# 4. Process results
if batch.status == "completed":
    # Download and process results
    with open("results.jsonl", "r") as f:
        for line in f:
            result = json.loads(line)
            custom_id = result["custom_id"]
            response = result["response"]["body"]["choices"][0]["message"]["content"]
            print(f"{custom_id}: {response}")
else:
    print(f"Batch failed with status: {batch.status}")
'''

LIST_BATCHES = '''
from litellm import batch_completion_list

# List all batches
batches = batch_completion_list(limit=10)

for batch in batches.data:
    print(f"ID: {batch.id}")
    print(f"Status: {batch.status}")
    print(f"Created: {batch.created_at}")
    print(f"Requests: {batch.request_counts}")
    print("---")
'''

DIFFERENT_REQUEST_TYPES = '''
import json

# Mix of completions and embeddings
requests = [
    # Chat completion
    {
        "custom_id": "chat-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Hello"}]
        }
    },
    # Embedding
    {
        "custom_id": "embed-1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {
            "model": "text-embedding-3-small",
            "input": "Text to embed"
        }
    }
]

with open("mixed_batch.jsonl", "w") as f:
    for req in requests:
        f.write(json.dumps(req) + "\\n")
'''

ERROR_HANDLING = '''
from litellm import batch_completion_retrieve
import json

batch = batch_completion_retrieve(batch_id="batch_abc123")

if batch.status == "completed":
    # Check for errors in results
    with open("results.jsonl", "r") as f:
        for line in f:
            result = json.loads(line)

            if "error" in result:
                print(f"Error in {result['custom_id']}: {result['error']}")
            else:
                # Process successful result
                response = result["response"]["body"]
                print(f"Success: {result['custom_id']}")

elif batch.status == "failed":
    print(f"Batch failed: {batch.errors}")
'''

MONITORING_PROGRESS = '''
from litellm import batch_completion_retrieve
import time

def monitor_batch(batch_id, check_interval=60):
    """Monitor batch progress and print updates."""
    while True:
        batch = batch_completion_retrieve(batch_id=batch_id)

        counts = batch.request_counts
        total = counts.get("total", 0)
        completed = counts.get("completed", 0)
        failed = counts.get("failed", 0)

        if total > 0:
            progress = (completed + failed) / total * 100
            print(f"Progress: {progress:.1f}% ({completed}/{total} completed, {failed} failed)")

        if batch.status in ["completed", "failed", "expired", "cancelled"]:
            print(f"Final status: {batch.status}")
            break

        time.sleep(check_interval)

monitor_batch("batch_abc123")
'''

COST_CALCULATION = '''
from litellm import batch_completion_retrieve, completion

# Batch processing (50% discount)
batch = batch_completion_retrieve(batch_id="batch_abc123")
if batch.status == "completed":
    batch_cost = batch.request_counts["completed"] * 0.50  # Example
    print(f"Batch cost: ${batch_cost:.2f}")

# Compare with synchronous
sync_cost = batch.request_counts["total"] * 1.00  # Example
print(f"Sync cost would be: ${sync_cost:.2f}")
print(f"Savings: ${sync_cost - batch_cost:.2f} ({((sync_cost - batch_cost) / sync_cost * 100):.0f}%)")
'''

FAST_SLEEP = "import time\n_sleep = time.sleep\ntime.sleep = lambda seconds: _sleep(min(seconds, 0.05))\n"

# The one line the README adds to each snippet that cannot work as printed (see the module docstring).
DOWNLOAD_RESULTS = ('# 4. Process results\n',
                    '# 4. Process results\nfrom asyncbatch import batch_completion_results; '
                    'batch_completion_results(batch.id, "results.jsonl")\n')
ERROR_CHECK = ('if "error" in result:', 'if result.get("error"):')


def only_the_import_changed(snippet: str, *edits: tuple[str, str]) -> str:
    script = snippet.replace("from litellm import", "from asyncbatch import")
    for old, new in edits:
        assert old in script
        script = script.replace(old, new)
    return script


@pytest.fixture
def page(tmp_path: Path) -> object:
    emu = EmulatorThread(EmulatorConfig(complete_after=0.3), data_dir=tmp_path / "emu").start()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAST_SLEEP)
    env = {**os.environ, "OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": API_KEY,
           "ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": API_KEY,
           "ASYNCBATCH_DB": str(tmp_path / "jobs.db"),
           "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}

    class Page:
        emulator = emu

        def run(self, script: str) -> str:
            done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, f"{script}\n{done.stderr}"
            return done.stdout

    yield Page()
    emu.stop()


def test_every_snippet_of_litellms_batch_page_runs_with_only_the_import_changed(page: object) -> None:
    run, emu = page.run, page.emulator  # type: ignore[attr-defined]
    quick = run(only_the_import_changed(QUICK_START))
    assert "Batch ID: job_" in quick and "Status: in_progress" in quick  # created at the provider already
    assert "Batch ID: job_" in run(only_the_import_changed(OPENAI_BATCH_API))
    assert "Batch ID: job_" in run(only_the_import_changed(ANTHROPIC_BATCH_API))
    assert {b.provider for b in emu.ledger.batches_created()} == {"openai", "anthropic"}

    workflow = run(only_the_import_changed(COMPLETE_WORKFLOW, DOWNLOAD_RESULTS))
    assert "Created batch: job_" in workflow and "Status: completed" in workflow
    assert sum(line.startswith("task-") for line in workflow.splitlines()) == 100
    assert "task-7: " in workflow and "Task 7" in workflow

    listed = run(only_the_import_changed(LIST_BATCHES))
    assert listed.count("ID: job_") == 4 and "Requests: RequestCounts(total=100" in listed
    run(DIFFERENT_REQUEST_TYPES)

    # a provider batch id kept from an earlier run, as LiteLLM users have them
    workflow_batch = emu.ledger.batches_created()[-1].id
    assert workflow_batch.startswith("batch_")
    kept = ("batch_abc123", workflow_batch)
    errors = run(only_the_import_changed(ERROR_HANDLING, kept, ERROR_CHECK))
    assert errors.count("Success: task-") == 100 and "Error in" not in errors
    monitored = run(only_the_import_changed(MONITORING_PROGRESS, kept))
    assert "Progress: 100.0% (100/100 completed, 0 failed)" in monitored and "Final status: completed" in monitored
    cost = run(only_the_import_changed(COST_CALCULATION, kept))
    assert "Batch cost: $50.00" in cost and "Savings: $50.00 (50%)" in cost


def test_the_pages_error_check_is_what_the_readme_corrects(page: object) -> None:
    """As printed, the page's check calls every line an error: OpenAI output lines carry ``"error": null``."""
    run = page.run  # type: ignore[attr-defined]
    run(only_the_import_changed(COMPLETE_WORKFLOW, DOWNLOAD_RESULTS))
    batch_id = page.emulator.ledger.batches_created()[-1].id  # type: ignore[attr-defined]
    as_printed = run(only_the_import_changed(ERROR_HANDLING, ("batch_abc123", batch_id)))
    assert as_printed.count("Error in task-") == 100 and "Error in task-0: None" in as_printed
