"""The twin's scripted pedal (sf_policy.sim.pedal) against a stand-in recorder, without ROS."""

from __future__ import annotations

from sf_policy.sim.pedal import START_ATTEMPTS, START_WAIT_S, ScriptedPedal

STATUS_PERIOD = 0.5  # the recorder publishes its status twice a second
STEP = 0.01


class World:
    """A clock, a recorder that answers commands in its next status, and the pedal's hold()."""

    def __init__(self, *, listening_at=0.0, streams_at=0.0, lose_starts=0):
        self.now = 0.0
        self.listening_at, self.streams_at, self.lose_starts = listening_at, streams_at, lose_starts
        self.state = "idle"
        self.sent: list[tuple[float, str]] = []
        self.held: list[tuple[float | None, float]] = []  # (asked seconds, time spent)
        self.logged: list[str] = []
        self.warned: list[str] = []
        self._next_status = 0.0
        self.pedal = ScriptedPedal(send=self.send, listening=lambda: self.now >= self.listening_at,
                                   hold_s=0.3, log=self.logged.append, warn=self.warned.append)

    def send(self, command: str) -> None:
        self.sent.append((round(self.now, 3), command))
        if command.startswith("start") and self.lose_starts:
            self.lose_starts -= 1  # lost while discovery matches the recorder to us
            return
        word = command.split()[0]
        if word == "start" and self.state == "idle":
            self.state = "recording"
        elif word in ("stop", "discard") and self.state == "recording":
            self.state = "idle"

    def status(self) -> dict:
        silent = [] if self.now >= self.streams_at else ["/camera_f/color/image_raw"]
        return {"state": self.state, "silent": silent}

    def hold(self, seconds, until) -> None:
        start = self.now
        while True:
            if until is not None and until():
                break
            if seconds is not None and self.now - start >= seconds - 1e-9:
                break
            assert self.now < 600, "held forever"
            self.now += STEP
            if self.now >= self._next_status:
                self._next_status = self.now + STATUS_PERIOD
                self.pedal.on_status(self.status())
        self.held.append((seconds, round(self.now - start, 3)))


def test_start_waits_for_a_recorder_that_hears_every_stream_and_us():
    world = World(listening_at=1.0, streams_at=3.0)
    world.pedal.on_status({"state": "idle"})  # no "silent" list: not known to hear the streams
    assert not world.pedal.ready()
    world.pedal.begin("lift the pot", world.hold)
    assert world.logged and "waiting for the recorder" in world.logged[0]
    start_time, command = world.sent[0]
    assert command == "start lift the pot" and start_time >= 3.0
    assert world.state == "recording" and world.warned == []
    assert world.held[-1] == (0.3, 0.3), "the still lead-in after the start"


def test_a_ready_recorder_is_started_at_once():
    world = World()
    world.pedal.on_status(world.status())
    world.pedal.begin("p", world.hold)
    assert world.logged == [] and world.sent == [(0.0, "start p")]
    assert [s for s, _ in world.held] == [START_WAIT_S, 0.3]
    assert world.held[0][1] <= STATUS_PERIOD + STEP, "the start is confirmed by the next status"


def test_a_lost_start_is_sent_again_until_the_recorder_records():
    world = World(lose_starts=2)
    world.pedal.on_status(world.status())
    world.pedal.begin("p", world.hold)
    assert [c for _, c in world.sent] == ["start p"] * 3
    assert world.state == "recording" and len(world.warned) == 2
    assert "attempt 1" in world.warned[0] and "attempt 2" in world.warned[1]
    times = [t for t, _ in world.sent]
    assert all(b - a >= START_WAIT_S - 1e-6 for a, b in zip(times, times[1:]))


def test_the_pedal_gives_up_after_its_attempts_and_goes_on():
    world = World(lose_starts=100)
    world.pedal.on_status(world.status())
    world.pedal.begin("p", world.hold)
    assert len(world.sent) == START_ATTEMPTS and len(world.warned) == START_ATTEMPTS
    assert world.state == "idle" and world.held[-1] == (0.3, 0.3)


def test_end_saves_a_success_discards_a_failure_and_forgets_the_status():
    for success, word in ((True, "stop"), (False, "discard")):
        world = World()
        world.pedal.on_status(world.status())
        world.pedal.begin("p", world.hold)
        world.pedal.end(success, world.hold)
        assert world.sent[-1][1] == word and world.state == "idle"
        assert world.held[-1] == (0.3, 0.3)
        # A status from before the command must not make the next start look ready at once.
        assert world.pedal.status == {} and not world.pedal.ready()
