"""The web app in a real browser: headless Chromium (Debian's package) driven by Playwright against `framepack-native
serve --demo` on a free local port, as a person would use it.

One session, in order: bad input (no image, an unreadable image, a seed out of range; a slider keeps its range) is a
message in the page and queues nothing; a first job's progress and preview change while it runs and a playable video of the expected length
appears; a second job is stopped in the middle and keeps a playable partial video while a third, queued behind it,
runs after it; after a restart of the server the three jobs are listed and their parameters load back into the form
(from the list, and from a job's JSON file). The expected lengths come from the official
app's section rule (sections = max(round(seconds * 30 / (4 * window)), 1), 4 * window frames each plus the first).
FRAMEPACK_SCREENSHOT=PATH keeps the page's screenshot there (the README's picture).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from playwright.sync_api import sync_playwright

from framepack_native.video import read_video

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# what a closed network needs (the machine's notes): no background connections, no sandbox as root
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW, FPS = 9, 30
TIMEOUT = 180.0


def expected_frames(seconds, window=WINDOW):
    sections = max(round(seconds * FPS / (4 * window)), 1)
    return sections, 4 * window * sections + 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, outputs, tmp):
        self.outputs, self.tmp = outputs, tmp
        self.port = _free_port()
        env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
        self.log = open(tmp / f"serve-{self.port}.log", "w")
        command = ["serve", "--demo", "--device", "cpu", "--port", str(self.port), "--outputs", str(outputs)]
        self.proc = subprocess.Popen([sys.executable, "-c", "import sys; from framepack_native.cli import main; "
                                      "sys.exit(main())", *command], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.proc.poll() is None, f"serve exited: {self.read_log()}"
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer: {self.read_log()}"
            time.sleep(0.5)

    def read_log(self):
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
        return code


def wait_for(condition, what, timeout=TIMEOUT, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def queue_jobs(outputs):
    path = outputs / "queue.json"
    return json.loads(path.read_text())["jobs"] if path.is_file() else []


def set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def video_in_page(page):
    """(duration, readyState, error) of the page's video element, once it has a source."""
    return page.evaluate("""() => { const v = document.querySelector('#video video');
        return v && v.src ? [v.duration, v.readyState, v.error && v.error.code] : null }""")


def playable(page):
    state = video_in_page(page)
    return state if state and state[1] >= 1 and state[0] > 0 else None


@pytest.fixture
def browser():
    assert Path(CHROMIUM).is_file(), "the browser test needs Chromium: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_app_in_browser(browser, tmp_path):
    from framepack_native.demo import demo_image
    start_png = tmp_path / "start.png"
    demo_image().save(start_png)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    outputs = tmp_path / "outputs"
    server = Server(outputs, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server.url)
        page.wait_for_selector("#start")
        message = page.locator("#message")

        # bad input: a message in the page, nothing queued, nothing written
        page.click("#start")
        wait_for(lambda: "Start image" in message.inner_text(), "the no-image message")
        page.locator("#image input[type=file]").set_input_files(str(broken))
        page.locator("#prompt textarea").fill("waves roll in")
        page.click("#start")
        wait_for(lambda: "broken.png" in message.inner_text(), "the unreadable-image message")
        assert "cannot read image" in message.inner_text()
        page.locator("#image button[aria-label='Remove Image']").click()
        page.locator("#image input[type=file]").set_input_files(str(start_png))
        seed = page.locator("#seed input")
        seed.fill("1e30")  # the sliders stop at their ends in the page; a seed box takes any number
        seed.press("Tab")
        page.click("#start")
        wait_for(lambda: "Seed must be between" in message.inner_text(), "the out-of-range message")
        set_number(page, "seconds", 500)
        assert page.locator("#seconds input[type=number]").input_value() == "120"  # the slider keeps its range
        seed.fill("31337")
        seed.press("Tab")
        assert sorted(p.name for p in outputs.iterdir()) == [".lock"]  # the server's lock on the folder, empty

        # job 1: progress and preview change while it runs; a playable video of the expected length
        sections, frames = expected_frames(2)
        set_number(page, "seconds", 2)
        page.click("#start")
        wait_for(lambda: "Queued job" in message.inner_text(), "job 1 queued")
        progress_seen, previews_seen = set(), set()

        def job1_done():
            text = page.locator("#progress").inner_text()
            if "step" in text:
                progress_seen.add(text.split(";")[0])
            src = page.evaluate("() => { const i = document.querySelector('#preview img'); return i && i.src }")
            if src:
                previews_seen.add(src)
            jobs = queue_jobs(outputs)
            return jobs and jobs[0]["status"] == "done"
        wait_for(job1_done, "job 1 to finish", every=0.1)
        assert len(progress_seen) >= 2, progress_seen
        assert len(previews_seen) >= 2, previews_seen
        job1 = queue_jobs(outputs)[0]
        assert (job1["frames"], job1["sections"]) == (frames, sections)
        duration, _, error = wait_for(lambda: playable(page) if "done" in page.locator("#progress").inner_text()
                                      else None, "job 1's video in the page")
        assert error is None and abs(duration - frames / FPS) < 1.5 / FPS, (duration, frames)
        assert read_video(outputs / job1["output"]).shape[0] == frames
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("FRAMEPACK_SCREENSHOT"):
            shutil.copy(shot, os.environ["FRAMEPACK_SCREENSHOT"])
        saved = json.loads((outputs / f"{job1['id']}.json").read_text())
        assert saved["params"]["seconds"] == 2 and saved["params"]["prompt"] == "waves roll in"

        # job 2 stopped in its second section keeps a playable partial video; job 3, queued behind it, runs after
        sections2, frames2 = expected_frames(4)
        set_number(page, "seconds", 4)
        page.click("#start")
        wait_for(lambda: len(queue_jobs(outputs)) == 2, "job 2 queued")
        page.locator("#prompt textarea").fill("a calm sea at night")
        set_number(page, "seconds", 1)
        page.click("#start")
        wait_for(lambda: "behind 1" in message.inner_text(), "job 3 queued behind job 2")
        wait_for(lambda: queue_jobs(outputs)[1]["frames"] > 0, "job 2's first section")
        page.click("#stop")
        wait_for(lambda: queue_jobs(outputs)[1]["status"] == "stopped", "job 2 to stop")
        job2 = queue_jobs(outputs)[1]
        assert sections2 == 3 and 0 < job2["frames"] < frames2 and 1 <= job2["sections_done"] < sections2, job2
        assert read_video(outputs / job2["output"]).shape[0] == job2["frames"]
        wait_for(lambda: queue_jobs(outputs)[2]["status"] == "done", "job 3 to run after the stop")
        job3 = queue_jobs(outputs)[2]
        assert job3["frames"] == expected_frames(1)[1] and job3["started"] >= job2["completed"]
        assert read_video(outputs / job3["output"]).shape[0] == job3["frames"]

        # the stopped job's partial video plays in the page
        page.locator("#job-select input").click()
        page.get_by_role("option", name=job2["id"]).click()
        page.click("#show")
        duration, _, error = wait_for(lambda: (lambda s: s if s and abs(s[0] - job2["frames"] / FPS) < 1.5 / FPS
                                               else None)(playable(page)), "job 2's partial video in the page")
        assert error is None
    finally:
        code = server.stop()
    assert code == 0, server.read_log()
    leftovers = [p.name for p in outputs.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []

    # after a restart the finished jobs are listed
    server = Server(outputs, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server.url)
        wait_for(lambda: all(j["id"] in page.locator("#jobs").inner_text() for j in (job1, job2, job3)),
                 "the jobs listed after a restart")
        table = page.locator("#jobs").inner_text()
        assert table.count("done") >= 2 and "stopped" in table

        # a finished job's parameters and picture load back into the form; so does a job's JSON file dropped in
        page.locator("#job-select input").click()
        page.get_by_role("option", name=job3["id"]).click()
        page.click("#load")
        wait_for(lambda: page.locator("#prompt textarea").input_value() == "a calm sea at night", "job 3's prompt")
        assert page.locator("#seconds input[type=number]").input_value() == "1"
        wait_for(lambda: page.locator("#image img").count() > 0, "job 3's start image in the form")
        page.locator("#params-file input[type=file]").set_input_files(str(outputs / f"{job2['id']}.json"))
        wait_for(lambda: page.locator("#seconds input[type=number]").input_value() == "4", "job 2's length")
        assert page.locator("#prompt textarea").input_value() == "waves roll in"
    finally:
        assert server.stop() == 0, server.read_log()
