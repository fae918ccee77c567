"""The blocking helpers in a real Jupyter kernel (nbclient): inside the kernel's running loop, they create the
batch, wait for it, and show its progress in the cell by themselves, updated in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncbatch.emulator import EmulatorConfig, EmulatorThread
from tests.helpers import API_KEY

CELL = """
from asyncbatch import batch_completion, batch_completion_results
batch = batch_completion(model="gpt-5.4-mini", messages=[[{{"role": "user", "content": f"q{{i}}"}}] for i in range(30)],
                         api_base={base_url!r}, api_key={key!r}, db={db!r})
print(batch.status)
path = batch_completion_results(batch.id, "out.jsonl", db={db!r})
print(sum(1 for _ in open(path)), "results")
"""


def test_waiting_helpers_show_progress_in_the_cell_by_themselves(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    messages: list[tuple[str, dict[str, Any]]] = []

    class Recording(NotebookClient):  # type: ignore[misc]
        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            if msg["msg_type"] in ("display_data", "update_display_data"):
                messages.append((msg["msg_type"], dict(msg["content"]["data"])))
            return super().process_message(msg, cell, cell_index)

    with EmulatorThread(EmulatorConfig(complete_after=2.0), data_dir=tmp_path / "emu") as emu:
        source = CELL.format(base_url=emu.openai_base_url, key=API_KEY, db=str(tmp_path / "jobs.db"))
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        Recording(notebook, timeout=120, kernel_name="python3",
                  resources={"metadata": {"path": str(tmp_path)}}).execute()
        assert len(emu.ledger.batches_created()) == 1

    outputs = notebook.cells[0].outputs
    printed = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "in_progress\n" in printed and "30 results\n" in printed, printed
    kinds = [kind for kind, _ in messages]
    assert kinds.count("display_data") == 1 and "update_display_data" in kinds
    assert all("asyncbatch-progress" in data.get("text/html", "") for _, data in messages)
    assert "30/30" in messages[-1][1]["text/html"] and "done" in messages[-1][1]["text/html"]
