"""A bag whose recorder was killed mid-episode is recovered (sf_policy/record/repair.py).

The kill is real: a process writes a bag with RawBagWriter and is killed with SIGKILL while
the bag is open; rosbags then refuses the bag, `sf dataset repair-bag` rewrites it, and the
repaired bag holds exactly the first messages written (bytes and receive times), the
recorder's prompt, and converts into a valid dataset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader
from typer.testing import CliRunner

from sf_policy.record.bag import (
    OPEN_BAG_DATA, OUTCOME_KEY, PROMPT_KEY, STARTED_KEY, BagError, bag_custom_data, needs_repair,
)
from sf_policy.record.from_bag import convert_bag
from sf_policy.record.repair import REPAIRED_KEY, TRUNCATED_SUFFIX, repair_bag
from test_bag import T0, reference_frames, synthetic_events, write_bag

HERE = Path(__file__).resolve().parent

# Writes the synthetic events into a bag, waits until the writer thread has written them all,
# says so and sleeps with the bag still open: the moment a recorder is killed mid-episode.
WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_bag import synthetic_events
from sf_policy.record.bag import recorder_topics, PROMPT_KEY, STARTED_KEY
from sf_policy.record.bag_writer import RawBagWriter
bag = RawBagWriter({path!r}, recorder_topics(), custom_data={{PROMPT_KEY: "lift the pot", STARTED_KEY: "0"}})
for topic, raw, received in synthetic_events({seconds}):
    bag.write(topic, raw, received)
while bag.backlog:
    time.sleep(0.01)
print("written", flush=True)
time.sleep(60)
"""


def _messages(bag: Path) -> list[tuple[str, int, bytes]]:
    with Reader(bag) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def _killed_mid_episode(tmp_path: Path, seconds: float) -> Path:
    bag = tmp_path / "killed"
    script = WRITER.format(tests=str(HERE), path=str(bag), seconds=seconds)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return bag


def test_a_bag_killed_mid_episode_is_recovered_and_converts(tmp_path):
    events = synthetic_events(3.0)  # ~2.7 MB: two 1 MiB chunks reach the disk, the third is open
    bag = _killed_mid_episode(tmp_path, 3.0)
    assert needs_repair(bag) and (bag / OPEN_BAG_DATA).is_file()
    with pytest.raises(BagError, match="never closed.*sf dataset repair-bag"):
        convert_bag(bag, tmp_path / "ds", progress=False)

    summary = repair_bag(bag)
    assert summary.repaired and summary.topics == 7 and 0 < summary.messages < len(events)
    assert summary.kept == bag / f"killed.mcap{TRUNCATED_SUFFIX}" and summary.kept.is_file()
    assert not needs_repair(bag) and not (bag / OPEN_BAG_DATA).exists()
    # Exactly the first messages written, in order, bytes and receive times unchanged.
    expected = [(topic, received, raw) for topic, raw, received in events[:summary.messages]]
    assert _messages(bag) == expected
    custom = bag_custom_data(bag)
    assert custom[PROMPT_KEY] == "lift the pot" and custom[STARTED_KEY] == "0"
    assert custom[OUTCOME_KEY] == "interrupted" and custom[REPAIRED_KEY].startswith(str(summary.messages))

    from sf_policy.data.validate import validate
    converted = convert_bag(bag, tmp_path / "ds", progress=False)
    recovered = [(topic, raw, received) for topic, received, raw in expected]
    assert converted.bags[0].frames == len(reference_frames(recovered)) > 30
    assert validate(tmp_path / "ds") == []
    assert repair_bag(bag).repaired is False  # a second repair finds a complete bag


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.999])
def test_truncation_anywhere_recovers_a_prefix(tmp_path, cut):
    """The file cut at any byte (inside a chunk, inside a record): a prefix of the messages.
    rosbags writes the schemas and channels into the first 1 MiB chunk: a file cut before that
    chunk ends holds nothing to recover, and the repair says so and leaves it as it was."""
    events = synthetic_events(2.0, t0=T0)  # ~2 MB: chunks end near 1.05 MB and at the end
    bag = write_bag(tmp_path / "b", events, custom={PROMPT_KEY: "p"})
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    truncated = data[:int(len(data) * cut)]
    mcap.write_bytes(truncated)
    (bag / "metadata.yaml").unlink()

    if len(truncated) < 1_050_000:
        with pytest.raises(BagError, match="no channel record survived"):
            repair_bag(bag)
        assert mcap.read_bytes() == truncated and needs_repair(bag)
        assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no scratch left behind
        return
    summary = repair_bag(bag, keep_original=False)
    assert not summary.kept and list(bag.glob(f"*{TRUNCATED_SUFFIX}")) == []
    got = _messages(bag)
    assert got == [(t, r, raw) for t, raw, r in events[:len(got)]] and len(got) == summary.messages > 0
    assert summary.stopped_at  # the reader said where the file ended
    # The prompt was in metadata.yaml only (the bag had been closed once): none to restore.
    assert PROMPT_KEY not in bag_custom_data(bag) and bag_custom_data(bag)[OUTCOME_KEY] == "interrupted"


def test_cli_repair_bag(tmp_path):
    from sf_policy.cli.main import app

    complete = write_bag(tmp_path / "ok", synthetic_events(0.2), custom={PROMPT_KEY: "p"})
    broken = write_bag(tmp_path / "broken", synthetic_events(0.5), custom={PROMPT_KEY: "p"})
    (broken / "metadata.yaml").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["dataset", "repair-bag", str(complete), str(broken), str(empty)])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert "ok: complete (has metadata.yaml): nothing to repair" in output and "repaired" in output
    assert "empty: holds no .mcap file" in output and "Traceback" not in output
    assert not needs_repair(broken)


def test_the_recorder_names_bags_left_unclosed_when_it_starts(tmp_path):
    from sf_policy.record.bag import recorder_topics
    from sf_policy.record.episode_bags import EpisodeBags

    broken = write_bag(tmp_path / "bags" / "ds_episode_3", synthetic_events(0.2), custom={PROMPT_KEY: "p"})
    write_bag(tmp_path / "bags" / "ds_episode_2", synthetic_events(0.2), custom={PROMPT_KEY: "p"})
    (broken / "metadata.yaml").unlink()
    said: list[str] = []
    EpisodeBags(tmp_path / "bags", recorder_topics(), log=said.append)
    assert said == [f"raw bag {broken}: never closed (a recorder was killed mid-episode); "
                    f"`sf dataset repair-bag {broken}` recovers it"]
