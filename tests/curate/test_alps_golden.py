"""Curation output is byte-identical to the per-phrase implementation (commit f64674c).

``data/alps_golden_output.json.gz`` was written by ``data/make_alps_golden.py`` with the old code
(per-character alignment, one window per phrase, every token through spaCy's attribute ruler
and lemmatizer); this curates the same input with the current code, under the same configs.
The old per-phrase ``narrative_alps`` is also kept here as a slow reference and compared with
the batched one on the same narratives and on random edge cases (ties on window edges, signed
zeros, points off the image, no points, unaligned phrases).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from omniseg.curate.alps import (
    Alp,
    AlpConfig,
    NarrativeAlps,
    narrative_alps,
    narratives_alps,
    points_box,
    window_points,
)
from omniseg.curate.narrative_lines import (
    _json_numbers,
    _parse_general,
    _parse_line_fast,
    parse_line,
    parse_lines,
    trace_array,
)
from omniseg.curate.phrases import align_utterances, extract_phrases, phrase_interval
from omniseg.curate.pos import PosTagger, TaggedToken, load_tagger, tag_texts
from omniseg.data.records import Narrative, TracePoint, Utterance

DATA = Path(__file__).resolve().parent / "data"


def _golden_module():
    spec = importlib.util.spec_from_file_location("_make_alps_golden", DATA / "make_alps_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_narrative_alps(narrative, tokens, width, height, cfg, points=None) -> NarrativeAlps:
    """The per-phrase implementation of f64674c (slow, obvious reference)."""
    out = NarrativeAlps()
    phrases, dropped = extract_phrases(narrative.caption, tokens, cfg.stuff, cfg.non_object)
    out.dropped.update({k: v for k, v in dropped.items() if v})
    if not phrases:
        return out
    char_utt = align_utterances(narrative.caption, narrative.timed_caption)
    if points is None:
        points = trace_array(narrative)
    for p in phrases:
        interval = phrase_interval(p.start, p.end, char_utt, narrative.timed_caption)
        if interval is None:
            out.dropped["not_aligned"] += 1
            continue
        win = window_points(points, interval[0], interval[1], cfg.t_pad)
        if len(win) < cfg.min_points:
            out.dropped["too_few_points"] += 1
            continue
        box = points_box(win, width, height)
        if box is None:
            out.dropped["degenerate_box"] += 1
            continue
        out.alps.append(Alp(p.text, box, len(win), interval[0], interval[1]))
    return out


def _same(a: NarrativeAlps, b: NarrativeAlps) -> None:
    assert a.dropped == b.dropped
    assert len(a.alps) == len(b.alps)
    for x, y in zip(a.alps, b.alps):
        # repr: bit-exact floats, signed zeros included
        assert repr((x.phrase, x.box, x.num_points, float(x.t_start), float(x.t_end))) == repr(
            (y.phrase, y.box, y.num_points, float(y.t_start), float(y.t_end)))


def test_curation_matches_the_golden_output(tmp_path, monkeypatch):
    import omniseg.curate.pos as pos

    nlp = load_tagger()
    monkeypatch.setattr(pos, "load_tagger", lambda model=None: nlp)  # one spaCy load for the 6 runs
    mod = _golden_module()
    path = tmp_path / "in.jsonl"
    path.write_bytes(gzip.decompress((DATA / "alps_golden_input.jsonl.gz").read_bytes()))
    golden = json.loads(gzip.decompress((DATA / "alps_golden_output.json.gz").read_bytes()))
    for chunk_lines in (7,):
        got = mod.curate(path, golden["sizes"], chunk_lines=chunk_lines)
        assert set(got) == set(golden["results"])
        for name, want in golden["results"].items():
            assert got[name]["alps_jsonl"] == want["alps_jsonl"], name
            assert got[name]["stats"] == want["stats"], name


def test_batched_alps_equal_the_per_phrase_reference_on_the_golden_input():
    nlp = load_tagger()
    lines = gzip.decompress((DATA / "alps_golden_input.jsonl.gz").read_bytes()).splitlines()
    parsed = []
    for raw in lines:
        try:
            parsed.append(parse_line(raw))
        except ValueError:
            continue
    tokens = list(tag_texts(nlp, [n.caption for _, n, _ in parsed]))
    for cfg in (AlpConfig(), AlpConfig(t_pad=0.0, min_points=1), AlpConfig(t_pad=0.25, min_points=2)):
        for (_, n, pts), toks in zip(parsed, tokens):
            _same(narrative_alps(n, toks, 201, 99, cfg, pts), reference_narrative_alps(n, toks, 201, 99, cfg, pts))
            _same(narrative_alps(n, toks, 201, 99, cfg), reference_narrative_alps(n, toks, 201, 99, cfg))


def _random_case(rng: random.Random) -> tuple[Narrative, list[TaggedToken]]:
    """A caption of random adjective / noun / other words, utterances on a 0.25 s grid (some
    dropped or renamed: transcript edits), and trace points whose t, x, y often sit exactly on
    window edges, on 0 / -0.0 and off the image."""
    vocab = [("red", "ADJ"), ("big", "ADJ"), ("ball", "NOUN"), ("cup", "NOUN"), ("Box", "PROPN"), ("on", "ADP"),
             ("the", "DET"), ("sky", "NOUN"), (",", "PUNCT")]
    words = [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
    caption, tokens, pos = "", [], 0
    for w, p in words:
        if caption and w != ",":
            caption += " "
        pos = len(caption)
        caption += w
        tokens.append(TaggedToken(w, pos, p, w.lower(), True))
    tokens = [TaggedToken(t.text, t.start, t.pos, t.lemma, t.end < len(caption) and caption[t.end] == " ") for t in tokens]
    utts = []
    for i, (w, _) in enumerate(words):
        r = rng.random()
        if r < 0.1:
            continue  # never spoken
        utts.append(Utterance("other" if r < 0.2 else w, i * 0.25, i * 0.25 + rng.choice([0.0, 0.25, 0.5])))
    grid = [k * 0.25 for k in range(-4, 4 * len(words) + 6)]
    coords = [0.0, -0.0, 1.0, 0.5, -0.2, 1.3, 0.25]
    nan = float("nan")
    traces = [[TracePoint(rng.choice(coords) if rng.random() < 0.5 else rng.random() if rng.random() < 0.98 else nan,
                          rng.choice(coords) if rng.random() < 0.5 else rng.random(),
                          rng.choice(grid) if rng.random() < 0.7 else rng.uniform(-1, 4) if rng.random() < 0.97 else nan)
               for _ in range(rng.randint(0, 30))] for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:  # traces are normally in time order
        traces = [sorted(seg, key=lambda p: p.t) for seg in traces if not any(math.isnan(p.t) for p in seg)]
    return Narrative(caption, utts, traces, dataset_id="test"), tokens


def test_batched_alps_equal_the_per_phrase_reference_on_random_cases():
    """narrative_alps and narratives_alps (a batch of all the cases at once) against the per-phrase
    reference, with NaN times and coordinates, unsorted traces, empty traces and captions."""
    rng = random.Random(0)
    stats = Counter()
    cases = [(*_random_case(rng), rng.choice([1, 7, 640]), rng.choice([1, 480])) for _ in range(1500)]
    for t_pad, min_points in ((0.0, 1), (0.25, 2), (0.5, 4)):
        cfg = AlpConfig(t_pad=t_pad, min_points=min_points, stuff=("sky",), non_object=())
        refs = [reference_narrative_alps(n, toks, w, h, cfg) for n, toks, w, h in cases]
        for got, ref in zip(narratives_alps([(n, toks, w, h, None) for n, toks, w, h in cases], cfg), refs):
            _same(got, ref)
        for (n, toks, w, h), ref in list(zip(cases, refs))[:300]:
            _same(narrative_alps(n, toks, w, h, cfg), ref)
        for ref in refs:
            stats.update(ref.dropped)
            stats["alps"] += len(ref.alps)
            stats["signed_zero"] += any(str(v) == "-0.0" for a in ref.alps for v in a.box)
            stats["nan_box"] += any(math.isnan(v) for a in ref.alps for v in a.box)
    # the random cases reach every branch
    assert all(stats[k] > 0 for k in ("alps", "not_aligned", "too_few_points", "degenerate_box", "stuff", "signed_zero",
                                      "nan_box"))


def test_pos_tagger_equals_the_full_spacy_pipeline():
    """PosTagger (memoized rule components) gives the very tokens of nlp.pipe with every component,
    on captions with spaCy's multi-token attribute-ruler words, twice (cold and warm memo)."""
    from tests.curate.test_pos import HAND_TAGGED

    texts = [h.replace("/N", "").replace("/A", "") for h in HAND_TAGGED] + [
        "Let's see: the boy is gonna kick the ball and y'all gotta watch. C'mon, dogs!", "", "  ",
        "I ain't doin' nothin' with 'em, ol' man; there is a dog and there are mice, geese and children's toys.",
        "A five-pointed star, a T-shirt and a left- and right-handed glove; GONNA Let's got ta.",
    ]
    nlp = load_tagger()
    tagger = PosTagger(nlp)
    assert tagger.fast
    want = [[tuple(vars(t).values()) for t in toks] for toks in tag_texts(nlp, texts, 4)]
    for _ in range(2):
        assert [[tuple(r) for r in rows] for rows in tagger.pipe(texts, 4)] == want
    assert tagger._memo


def test_window_extremes_and_signed_zero_boxes():
    pts = np.array([[0.0, 0.5, 1.0], [-0.0, 0.2, 1.0], [0.3, -0.0, 1.0], [0.3, 0.0, 1.0]])
    n = Narrative("A red ball.", [Utterance("A", 0.0, 0.5), Utterance("red", 0.5, 1.0), Utterance("ball.", 1.0, 1.5)],
                  [[TracePoint(*p) for p in pts]], dataset_id="test")
    toks = [TaggedToken("A", 0, "DET"), TaggedToken("red", 2, "ADJ", "red"), TaggedToken("ball", 6, "NOUN", "ball", False),
            TaggedToken(".", 10, "PUNCT", ".", False)]
    for order in ([0, 1, 2, 3], [1, 0, 3, 2]):
        p = pts[order]
        cfg = AlpConfig(min_points=1)
        _same(narrative_alps(n, toks, 10, 10, cfg, p), reference_narrative_alps(n, toks, 10, 10, cfg, p))


def _general_parse(raw: bytes):
    """parse_line's general path (json.loads of the whole line), as the reference of the fast one."""
    try:
        return _parse_general(raw)
    except Exception as e:  # noqa: BLE001 - the reference's exception is compared
        return type(e), str(e)


def _outcome(raw: bytes):
    try:
        return parse_line(raw)
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)


def _same_outcome(a, b) -> None:
    if isinstance(a[0], type):
        assert a == b
        return
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].shape == b[2].shape and a[2].tobytes() == b[2].tobytes()  # bit-exact, signed zeros


NUMBERS = ["0", "-0", "0.0", "-0.0", "1", "-1", "10", "0.5", "-0.25", "1e5", "1E-5", "-2.5e+3", "0e0", "-0e0",
           "123456789012345678901234567890", "0.1000000000000000055511151231257827", "2.2250738585072011e-308",
           "4.9e-324", "1.7976931348623157e308", "1e400", "-1e400", "9007199254740993", "0.30000000000000004",
           # not JSON numbers: the fast path must refuse them exactly like json does
           "01", "-01", "1.", ".5", "+1", "1e", "1e+", "--1", "1..2", "1.2.3", "1e5e5", "1e5.5", "0x10", "1-2", "-",
           "NaN", "Infinity", "-Infinity", "true", "null", '"1"', "[1]", "", "1 2", "00", "0.e1", "1.e1", "-.5"]


def test_fast_line_parser_equals_json_on_fuzzed_lines():
    rng = random.Random(1)
    base = {"dataset_id": "d", "image_id": "7", "annotator_id": 3, "caption": "A red ball.",
            "timed_caption": [{"utterance": "A red ball.", "start_time": 0.0, "end_time": 1.0}]}
    seen_fast = 0
    lines: list[bytes] = []
    wants: list = []
    for k in range(3000):
        n_seg = rng.choice([1, 1, 2, 3])
        segs = []
        for _ in range(n_seg):
            pts = []
            for _ in range(rng.randint(1, 4)):
                vals = [rng.choice(NUMBERS) if rng.random() < 0.3 else repr(round(rng.uniform(-1, 2), rng.randint(0, 17)))
                        for _ in range(3)]
                pts.append(f'{{"x": {vals[0]}, "y": {vals[1]}, "t": {vals[2]}}}')
            segs.append("[" + ", ".join(pts) + "]")
        traces = "[" + ", ".join(segs) + "]"
        r = rng.random()
        if r < 0.05:
            traces = traces.replace(", ", ",")
        elif r < 0.1:
            traces = traces.replace('"y"', '"z"', 1)
        elif r < 0.13:
            traces = traces.replace("}, {", "}, , {", 1)
        elif r < 0.16:
            traces = traces.replace("]]", "]]]", 1)
        elif r < 0.19:
            traces = traces[:-1]
        elif r < 0.25:  # a stray character anywhere (in the layout, in a number)
            at = rng.randrange(len(traces) + 1)
            traces = traces[:at] + rng.choice("0123456789.-eP]") + traces[at:]
        elif r < 0.28:  # valid JSON, other key order
            traces = re.sub(r'\{"x": ([^,]*), "y": ([^,]*),', r'{"y": \2, "x": \1,', traces, count=1)
        head = json.dumps(base)[:-1]
        line = (head + ', "traces": ' + traces + (', "voice_recording": "a]]b"}' if 0.28 <= r < 0.31 else "}")).encode()
        if k % 50 == 0:  # the key elsewhere / twice / escaped / not top level
            line = rng.choice([
                line.replace(b'"traces"', b'"tr\\u0061ces"'),
                line.replace(b'"caption": "A red ball."', b'"caption": "A \\"traces\\": [[]] ball."'),
                line[:-1] + b', "traces": []}',
                (head + ', "meta": {"traces": ' + traces + '}, "traces": []}').encode(),
                line.replace(b'"caption": "A red ball."', b'"caption": "omniseg:traces"'),
            ])
        want, got = _general_parse(line), _outcome(line)
        _same_outcome(got, want)
        lines.append(line)
        wants.append(want)
        try:
            fast = _parse_line_fast(line) is not None
        except ValueError:  # malformed JSON around the traces: parse_line takes the general path
            fast = False
        # valid lines in json.dumps' layout without exponents take the fast path
        canonical = r >= 0.31 and k % 50 != 0 and not isinstance(want[0], type) and not re.search("[eE]", traces)
        assert fast or not canonical, line
        seen_fast += fast
    assert seen_fast > 200
    # many lines at once: numbers read a group of lines at a time, bad lines among good ones
    huge = json.dumps({"x": 0.5, "y": 0.5, "t": 1.0}).replace("1.0", "1" * 400 + ".0")  # float: inf
    lines.insert(5, (json.dumps(base)[:-1] + ', "traces": [[' + huge + ']]}').encode())
    wants.insert(5, _general_parse(lines[5]))
    assert isinstance(wants[5][0], type) and "not finite" in wants[5][1]
    good = [i for i, w in enumerate(wants) if not isinstance(w[0], type)]
    for subset in (range(len(lines)), good, good[:40] + [5] + good[40:]):
        for got, want in zip(parse_lines([lines[i] for i in subset]), [wants[i] for i in subset], strict=True):
            _same_outcome((type(got), str(got)) if isinstance(got, Exception) else got, want)


def test_trace_numbers_are_read_exactly_as_json_reads_them():
    """The fast number reader (digits as an integer over a power of ten, float for numbers over 15
    characters) against json on traces in json.dumps' layout: numbers of 1 to 20 characters,
    signs, zeros, dots everywhere, decimals that are not doubles (rounding both ways)."""
    rng = random.Random(2)

    def number() -> str:
        if rng.random() < 0.2:
            text = repr(rng.uniform(-1e3, 1e3) if rng.random() < 0.5 else rng.uniform(-1, 1))  # up to 17 digits
            return text if "e" not in text else "1.5"
        if rng.random() < 0.1:
            return rng.choice(["0", "-0", "0.0", "-0.0", "-0.00", "9007199254740993", "0.30000000000000004",
                               "123456789012345", "-12345678901234.5", "0.000000000000001", "999999999999999"])
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18)))
        at = rng.randint(1, len(digits))  # the dot after `at` digits (none at the end)
        whole = digits[:at].lstrip("0") or "0"
        return ("-" if rng.random() < 0.3 else "") + whole + ("." + digits[at:] if at < len(digits) else "")

    n_short = 0
    for _ in range(300):
        segs = [[[number() for _ in range(3)] for _ in range(rng.randint(1, 5))] for _ in range(rng.randint(1, 3))]
        text = "[" + ", ".join("[" + ", ".join(f'{{"x": {x}, "y": {y}, "t": {t}}}' for x, y, t in seg) + "]"
                               for seg in segs) + "]"
        want = np.array([v for seg in json.loads(text) for p in seg for v in (p["x"], p["y"], p["t"])], dtype=np.float64)
        got = _json_numbers(text.encode())
        assert got is not None and got.tobytes() == want.tobytes(), text
        n_short += sum(len(v) <= 15 for seg in segs for p in seg for v in p)
    assert n_short > 1000  # most numbers take the integer / power-of-ten path
