"""The ``savegame`` command in a real terminal (tmux): tables, trees, colour, the progress
bar and the delete confirmation render there, and none of them leak into pipes."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run, savegame_exe

from savegame.savers import Checkpoint, MemorySaver
from savegame.savers.archive import ArchiveWriter

pytest.importorskip("click")
TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


class Terminal:
    """One tmux server of our own (its own socket), one 150x45 window running bash."""

    def __init__(self, workdir: Path):
        self.socket = f"savegame-test-{uuid.uuid4().hex[:8]}"
        env = {"PATH": f"{Path(savegame_exe()).parent}:{os.environ.get('PATH', '')}",
               "HOME": str(workdir), "TERM": "xterm-256color", "LANG": "C.UTF-8"}
        self._tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "45",
                   "env -i " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
                   + " bash --norc --noprofile", cwd=workdir)

    def _tmux(self, *args: str, cwd: Path | None = None) -> str:
        assert TMUX is not None
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True,
                              text=True, check=True, cwd=cwd, timeout=30).stdout

    def screen(self, colours: bool = False) -> str:
        return self._tmux("capture-pane", "-p", "-J", *(["-e"] if colours else []),
                          "-S", "-2000", "-t", "t")

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")

    def run(self, command: str, timeout: float = 60) -> str:
        """Run a command and return the screen once it has finished."""
        tag = uuid.uuid4().hex[:6]
        marker = f"__done_{tag}"  # typed as __done_"tag", so the echoed line never matches
        self._tmux("send-keys", "-t", "t", "clear", "Enter")
        self.type(f'{command}; echo __done_"{tag}"=$?')
        screen = self.wait_for(f"{marker}=", timeout)
        return screen

    def close(self) -> None:
        subprocess.run([TMUX or "tmux", "-L", self.socket, "kill-server"],
                       capture_output=True, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    saver = MemorySaver()
    for t in range(40):
        messages: list[str] = []
        for turn in range(50):
            messages.append(f"message {turn}")
            saver.put(Checkpoint(f"chat-{t:02d}", {"messages": messages}, node_id="agent",
                                 next_node_id="tools"))
    path = tmp_path_factory.mktemp("store") / "store.sgar"
    with ArchiveWriter.open(path) as writer:
        for thread in saver.list_threads():
            writer.write_thread(thread, *saver.read_records(thread))
    return f"memory://?load={path}"


def test_tables_trees_and_progress_render_in_a_terminal(terminal: Terminal, store: str) -> None:
    screen = terminal.run(f"savegame verify -s '{store}'")
    assert "verifying (2000 checkpoints)" in screen and "40/40" in screen
    assert "━" in screen  # the bar itself
    assert "OK: 40 thread(s), 2000 checkpoint(s)" in screen and "=0" in screen
    coloured = terminal.screen(colours=True)
    assert "\x1b[" in coloured  # styled on a terminal

    screen = terminal.run(f"savegame ls -s '{store}'")
    assert "┏" in screen and "┃ thread" in screen and "│ chat-39 │" in screen

    screen = terminal.run(f"savegame history -s '{store}' chat-07")
    assert "├── step   0  agent -> tools" in screen and "keyframe" in screen

    # the same commands through a pipe: no bar, no colour, nothing on stderr
    piped = run("verify", "-s", store)
    assert piped.returncode == 0 and piped.stderr == ""
    assert "\x1b[" not in piped.stdout and "━" not in piped.stdout


def test_delete_asks_on_a_terminal(terminal: Terminal, store: str) -> None:
    terminal.type("clear")
    terminal.type(f"savegame delete -s '{store}' chat-03")
    terminal.wait_for("Delete thread 'chat-03' (50 checkpoint(s), 0 released version(s))? "
                      "[y/N]:")
    terminal.type("n")
    screen = terminal.wait_for("savegame: aborted")
    terminal.type('echo "st"atus=$?')
    assert "status=1" in terminal.wait_for("status=")
    assert "deleted thread" not in screen

    terminal.type("clear")
    terminal.type(f"savegame delete -s '{store}' chat-03")
    terminal.wait_for("[y/N]:")
    terminal.type("y")
    terminal.wait_for("deleted thread 'chat-03': 50 checkpoint(s)")
