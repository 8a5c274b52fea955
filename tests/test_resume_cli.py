"""`ingle chat --resume` and `--fit` on the command line: a conversation of the app goes on with its saved KV
cache, new messages are stored in it; a load that does not fit is one clear error."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ingle(*args, home, input=None, env=None):
    full = dict(os.environ, INGLE_HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=full,
        input=input, timeout=300,
    )  # fmt: skip


def _conversation(home) -> int:
    code = (
        "from engine.conversations import ConversationStore\n"
        "s = ConversationStore(); c = s.create(title='Cats', system_prompt='Be terse.')\n"
        "m = s.add_message(c.id, None, 'user', 'Tell me about cats, and the moon, at some length please.')\n"
        "s.add_message(c.id, m.id, 'assistant', 'Cats are small.')\n"
        "print(c.id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, INGLE_HOME=str(home)), check=True)  # fmt: skip
    return int(out.stdout)


def test_resume_reuses_the_saved_cache_and_stores_the_messages(tiny_model, tmp_path):
    home = tmp_path / "home"
    cid = _conversation(home)
    args = ("chat", tiny_model, "-c", "512", "--temp", "0", "-n", "4", "--stats", "--resume")
    first = ingle(*args, "Cats", home=home, input="And dogs?\n/exit\n")
    assert first.returncode == 0, first.stderr
    assert "resumed “Cats”: 3 messages; no saved cache used (no saved state)" in first.stderr
    saved = int(re.search(r"saved its cache \((\d+) tokens\)", first.stderr).group(1))
    assert (home / "kv-states" / f"conversation-{cid}.ingle-kv").exists()
    second = ingle(*args, str(cid), home=home, input="And birds?\n/exit\n")
    assert second.returncode == 0, second.stderr
    assert (
        f"5 messages; {saved} tokens from its saved cache" in second.stderr
    )  # the first run's reply was stored
    stats = re.search(r"prompt (\d+) tok \((\d+) from cache, (\d+) evaluated\)", second.stderr)
    assert int(stats.group(2)) == saved and int(stats.group(3)) == int(stats.group(1)) - saved
    assert re.search(r"threads: \d+ threads?", second.stderr)


def test_resume_of_an_unknown_conversation_is_one_clear_error(tiny_model, tmp_path):
    result = ingle(
        "chat", tiny_model, "-c", "512", "--resume", "Nope", home=tmp_path / "home", input="/exit\n"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "ingle: error: resume: no conversation 'Nope'; give its number or exact title (the app lists them)"
    )


def test_fit_says_what_it_chose_and_a_load_too_big_is_refused(tiny_model, tmp_path):
    home = tmp_path / "home"
    fitted = ingle("run", tiny_model, "the cat", "-n", "2", "--temp", "0", "--fit", "-c", "2048", home=home,
                   env={"INGLE_MEMORY_LIMIT": "2G"})  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    assert "Fit automatically: on the CPU" in fitted.stderr and "context 2048" in fitted.stderr
    refused = ingle("run", tiny_model, "the cat", "-n", "2", home=home, env={"INGLE_MEMORY_LIMIT": "64M"})
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("ingle: error: tiny.gguf does not fit: it needs")
    assert len(refused.stderr.strip().splitlines()) == 1
