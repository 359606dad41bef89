"""The logview page: structure, escaping and colours, and how headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from ajet.logging import write_logview
from ajet.schema import EpisodeResult, Sample, Task, WorkflowOutput

PROMPT = "Q: 2<3 & \"x\"?\n"
RESPONSE = "A: <b>yes</b>"


class CharTokenizer:
    """id = code point; enough to exercise rendering without a model."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def make_episode(index: int, reward: float, success: bool, **kw) -> EpisodeResult:
    tok = CharTokenizer()
    prompt, response = tok.encode(PROMPT), tok.encode(RESPONSE)
    ids = prompt + response
    mask = [0] * len(prompt) + [1] * len(response)
    # first response token very likely, the last one very unlikely
    logprobs = [0.0] * len(prompt) + [-0.01] + [-1.0] * (len(response) - 2) + [-9.0]
    sample = Sample(
        input_ids=ids, loss_mask=mask, rollout_logprobs=logprobs, token_versions=[0 if m else -1 for m in mask],
        task_id=f"task-{index}", episode_id=f"ep-{index}",
    )
    return EpisodeResult(
        task=Task(main_query=f"What is <{index}>?", task_id=f"task-{index}"),
        episode_id=f"ep-{index}", repeat_index=index, samples=[sample], reward=reward, is_success=success,
        output=WorkflowOutput(reward=None, metadata={"final_answer": "<script>alert(1)</script>"}), num_turns=1, **kw,
    )


class SpanCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.spans, self.tags, self._stack = [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "span" and "tok" in attrs.get("class", ""):
            self.spans.append({**attrs, "text": ""})
            self._stack.append(len(self.spans) - 1)
        elif tag == "span":
            self._stack.append(None)

    def handle_endtag(self, tag):
        if tag == "span" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] is not None:
            self.spans[self._stack[-1]]["text"] += data


@pytest.fixture
def page(tmp_path):
    episodes = [
        make_episode(0, 1.0, True),
        make_episode(1, 0.0, False, judge_error="ValueError: <no answer>"),
        make_episode(2, 0.0, False),
    ]
    path = write_logview(tmp_path / "step_3.html", episodes, CharTokenizer(), [0.8, -0.8, 0.0], step=3,
                         title="run <x>", max_episodes=2)
    return path


def test_logview_takes_per_sample_advantages(tmp_path):
    """The training loop pairs advantages with samples: a mapping keyed by id(sample)."""
    episodes = [make_episode(0, 1.0, True), make_episode(1, 0.0, False)]
    by_sample = {id(episodes[0].samples[0]): 1.25}  # the second episode has no trained sample
    text = write_logview(tmp_path / "p.html", episodes, CharTokenizer(), by_sample).read_text()
    first, second = text.split('id="episode-1"')
    assert "advantage +1.250" in first and "<dd>1.25</dd>" in first
    assert "advantage —" in second and "advantage +" not in second


def test_logview_structure_escaping_and_colours(page):
    text = page.read_text()
    parser = SpanCollector()
    parser.feed(text)
    assert "script" not in parser.tags and "b" not in parser.tags  # all user text is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"<(link|img|iframe)\b|src=|href=", text)  # no external assets
    assert text.count('class="episode ') == 2  # max_episodes
    tokens = [s for s in parser.spans if "data-id" in s]
    per_episode = len(PROMPT) + len(RESPONSE)
    assert len(tokens) == 2 * per_episode
    ctx = [s for s in tokens[:per_episode] if "ctx" in s["class"]]
    trained = [s for s in tokens[:per_episode] if "tr" in s["class"].split()]
    assert "".join(s["text"] for s in ctx) == PROMPT and "".join(s["text"] for s in trained) == RESPONSE
    assert all(int(s["data-id"]) == ord(s["text"]) for s in tokens)
    lightness = [int(re.search(r"hsl\(210, 85%, (\d+)%\)", s["style"]).group(1)) for s in trained]
    assert lightness[0] > lightness[1] > lightness[-1]  # light = likely, dark = unlikely
    assert "dark" in trained[-1]["class"] and "dark" not in trained[0]["class"]
    assert "logprob -9.0000" in trained[-1]["title"] and "advantage +0.800" in trained[-1]["title"]
    assert "advantage -0.800" in next(s for s in tokens[per_episode:] if "tr" in s["class"].split())["title"]
    assert "judge error: ValueError: &lt;no answer&gt;" in text
    assert "What is &lt;0&gt;?" in text and "task-1" in text and "run &lt;x&gt; — step 3" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_logview_renders_in_headless_chromium(page, tmp_path):
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    # The rendered DOM after parsing and layout: the spans exist with the computed classes and styles.
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    parser = SpanCollector()
    parser.feed(dom)
    trained = [s for s in parser.spans if "tr" in s.get("class", "").split() and "data-id" in s]
    ctx = [s for s in parser.spans if "ctx" in s.get("class", "").split() and "data-id" in s]
    assert len(trained) == 2 * len(RESPONSE) and len(ctx) == 2 * len(PROMPT)
    assert "script" not in parser.tags
    assert all(s["style"].startswith("background-color: hsl(210") for s in trained)
    assert "title" in trained[0] and "logprob" in trained[0]["title"]

    # Computed colours: a copy of the page with a probe script writes each token's painted background
    # into the DOM, so the check does not depend on an image library.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    painted = SpanCollector()
    painted.feed(dom)
    tokens = [s for s in painted.spans if "data-id" in s]
    ctx_bg = {s["data-bg"] for s in tokens if "ctx" in s["class"]}
    trained_bg = [_rgb(s["data-bg"]) for s in tokens if "tr" in s["class"].split()]
    assert ctx_bg == {"rgb(255, 243, 176)"}  # #fff3b0, the yellow of untrained tokens
    assert all(b > r and b > g for r, g, b in trained_bg)  # every trained token is blue
    first, last = trained_bg[0], trained_bg[len(RESPONSE) - 1]
    assert sum(first) > sum(last)  # likely token lighter than the unlikely one

    shot = tmp_path / "shot.png"  # for a human look; the test only needs Chromium to produce it
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.stat().st_size > 5000


_PROBE = """<script>
for (const el of document.querySelectorAll('span.tok')) {
  el.setAttribute('data-bg', getComputedStyle(el).backgroundColor);
}
</script>"""


def _rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return r, g, b
