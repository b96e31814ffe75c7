"""Fleet triage without images: registration keys and the known-good comparison, reading outputs,
arguments to paths, the stack's order, a sweep's sidecars and resume rule."""

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from volatility3_plugins import _merge_repeated_baselines
from volatility3_plugins.fleet import paths, stack, sweep
from volatility3_plugins.fleet.progress import Progress
from volatility3_plugins.schema import baseline, outputs
from volatility3_plugins.windows.callback_objects import classify


def row(obj: int, name: Optional[str], module: Optional[str], symbol: Optional[str], row_flags: str = "",
        registration: Optional[int] = 0x1000) -> Dict[str, Any]:
    """A row as the plugin's JSON renderer writes it."""
    return {"Object": obj, "Name": name, "AllowMultiple": True, "FoundBy": "list", "Registration": registration,
            "Routine": 0xF800, "Context": 0, "Busy": 0, "UnregisterWaiting": False, "Module": module,
            "Symbol": symbol, "Flags": row_flags}


def views(*rows):
    return [baseline.RowView.from_json(r) for r in rows]


def key(obj: str, module: str, symbol: str) -> baseline.RegistrationKey:
    return baseline.RegistrationKey(obj, module, symbol)


def test_keys_survive_kaslr_and_spelling_but_not_another_routine():
    one = views(row(0x10, r"\Callback\PowerState", "ndis.sys", "ndis.sys+0x1780"),
                row(0x10, r"\Callback\PowerState", "ntoskrnl.exe", "PopKsrCallback"))
    other_machine = views(row(0x99, r"\callback\POWERSTATE", "NDIS.SYS", "NDIS.SYS+0x1780"),
                          row(0x99, r"\Callback\PowerState", "ntoskrnl.exe", "PopKsrCallback"),
                          row(0x99, r"\Callback\PowerState", "ntoskrnl.exe", "popksrcallback"))
    assert baseline.keys(one) == [key(r"\callback\powerstate", "ndis.sys", "+0x1780"),
                                  key(r"\callback\powerstate", "ntoskrnl.exe", "PopKsrCallback")]
    assert baseline.keys(other_machine)[:2] == baseline.keys(one)
    # A kernel symbol is a name as the symbol table spells it: another spelling is another routine.
    assert baseline.keys(other_machine)[2] not in baseline.keys(one)


def test_unnamed_objects_are_alike_and_their_routines_tell_registrations_apart():
    """A foreign driver on an unnamed object differs from the baseline; the object's own
    registrant, on the same object, does not."""
    known = views(row(0x10, None, "tcpip.sys", "TcpConnectionCallback"),
                  row(0x20, None, "ndis.sys", "ndis.sys+0x1780"))
    suspect = views(row(0x30, None, "tcpip.sys", "TcpConnectionCallback"),
                    row(0x40, None, "ndis.sys", "ndis.sys+0x1780"),
                    row(0x40, None, "rkdrv.sys", "RkHook"))
    assert [k.object for k in baseline.keys(suspect)] == ["unnamed"] * 3
    golden = baseline.Baseline(frozenset(k for k in baseline.keys(known) if k), ())
    assert golden.judge(suspect) == [True, True, False]


def test_rows_that_prove_no_live_registration_have_no_key():
    rows = views(row(0x10, r"\Callback\A", "a.sys", "a.sys+0x10", "freed"),
                 row(0x10, r"\Callback\A", "a.sys", "a.sys+0x10", "allocation_unknown"),
                 row(0x10, r"\Callback\A", "a.sys", "a.sys+0x10", "unreadable"),
                 row(0x10, r"\Callback\A", None, None, registration=None),  # the object alone
                 row(0x10, r"\Callback\A", None, None, "list_incomplete"),  # module list not closed
                 row(0x10, r"\Callback\A", None, None, "outside_modules"))
    found = baseline.keys(rows)
    assert found[:5] == [None] * 5
    assert found[5] == key(r"\callback\a", "", "") and not found[5].comparable
    unreadable_name = baseline.RowView(None, True, "a.sys", "a.sys+0x10", (), name_readable=False)
    assert baseline.keys([unreadable_name]) == [None]


def known_good(*rows, build: Optional[int] = None, suspicious: int = 0) -> baseline.Baseline:
    found = {k for k in baseline.keys(views(*rows)) if k is not None and k.comparable}
    return baseline.Baseline(frozenset(found), (baseline.BaselineSource("golden.json", build, len(found), suspicious),))


def test_judge_and_flag_only_live_registrations_missing_from_every_baseline():
    good = known_good(row(0x10, r"\Callback\A", "a.sys", "a.sys+0x10"))
    rows = views(row(0x77, r"\Callback\A", "a.sys", "a.sys+0x10"),
                 row(0x77, r"\Callback\A", "evil.sys", "Hook", "multiple_on_exclusive"),
                 row(0x77, r"\Callback\A", "evil.sys", "Hook", "freed"),
                 row(0x77, r"\Callback\A", None, None, "outside_modules"))
    verdicts = good.judge(rows)
    assert verdicts == [True, False, None, False]
    flagged = [classify.classify_baseline(list(r.flags), v) for r, v in zip(rows, verdicts)]
    assert flagged == [[], ["multiple_on_exclusive", "not_in_baseline"], ["freed"],
                       ["outside_modules", "not_in_baseline"]]
    assert classify.classify_baseline(["not_in_directory"], False) == ["not_in_baseline", "not_in_directory"]
    assert classify.classify_baseline(["unreadable"], False) == ["unreadable"]
    assert classify.classify_baseline([], None) == []


def test_notes_warn_of_another_build_and_of_a_doubtful_baseline():
    good = known_good(row(0x10, r"\Callback\A", "a.sys", "a.sys+0x10"), build=19041, suspicious=2)
    notes = good.notes(7601)
    assert notes[0].startswith("Baseline of another build: 1 of 1 known-good outputs come from build 19041, "
                               "this image is build 7601")
    assert notes[1].startswith("Baseline with suspicious rows: golden.json (2)")
    assert good.notes(19041) == notes[1:] and good.notes(None) == notes[1:]


def write(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("document,message", [
    ({"rows": []}, "not a list of rows"),
    ([1], "row 0 is not an object of columns"),
    ([{"Object": 1, "Name": None}], "row 0 lacks the column(s) Registration, Module, Symbol, Flags"),
    ([dict(row(1, None, None, None), Flags=["freed"])], "row 0 has Flags that are not a comma-separated string"),
])
def test_outputs_that_are_not_the_plugins_are_refused_with_the_reason(tmp_path, document, message):
    path = write(tmp_path / "x.json", document)
    with pytest.raises(outputs.OutputError, match="x.json: " + message.replace("(", r"\(").replace(")", r"\)")):
        outputs.read_output(str(path))


def test_baseline_paths_not_json_empty_or_without_registrations_are_refused(tmp_path):
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(outputs.OutputError, match="not JSON"):
        baseline.load([str(tmp_path / "notjson.json")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(outputs.OutputError, match="a folder without any JSON output"):
        baseline.load([str(tmp_path / "empty")])
    only_objects = write(tmp_path / "objects.json", [row(1, r"\Callback\A", None, None, registration=None)])
    with pytest.raises(outputs.OutputError, match="no registration to compare with"):
        baseline.load([str(only_objects)])
    with pytest.raises(outputs.OutputError, match="no such file or folder"):
        baseline.load([str(tmp_path / "missing")])


def test_baseline_folder_takes_outputs_below_it_and_their_sidecars_build(tmp_path):
    output = write(tmp_path / "golden" / "win10" / "g1.raw.json", [row(1, r"\Callback\A", "a.sys", "a.sys+0x10")])
    write(tmp_path / "golden" / "win10" / "g1.raw.meta.json", {"build": 19041})
    write(tmp_path / "golden" / "stack.json", {"format": stack.JSON_FORMAT})  # not an output
    (tmp_path / "golden" / ".g2.raw.json.1.partial").write_text("[")  # an interrupted write
    good = baseline.load([str(tmp_path / "golden"), str(output)])  # the same file twice counts once
    assert [(s.path, s.build, s.registrations) for s in good.sources] == [(str(output), 19041, 1)]


def test_repeated_baseline_options_are_merged_for_volatility():
    argv = ["-f", "x", "windows.callbackobjects", "--baseline", "a", "b", "--no-scan", "--baseline=c"]
    assert _merge_repeated_baselines(argv) == ["-f", "x", "windows.callbackobjects", "--baseline", "a", "b", "c",
                                               "--no-scan"]
    assert _merge_repeated_baselines(["-f", "x", "windows.info"]) == ["-f", "x", "windows.info"]


def test_arguments_name_files_folders_globs_and_lists(tmp_path, monkeypatch):
    for name in ("a/host.raw", "b/host.raw", "b/notes.txt", "c/x.dmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# the rest\nc/x.dmp\n\na/host.raw\n")
    (tmp_path / "loop.txt").write_text("@loop.txt\n")
    monkeypatch.chdir(tmp_path)
    wanted = paths.image_filter()
    found = paths.expand(["*/host.raw", "b", "@list.txt", "b/notes.txt"], wanted)
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a/host.raw", "b/host.raw", "c/x.dmp", "b/notes.txt"]
    for bad, message in (("nothing.raw", "no such file or folder"), ("z*/q", "the pattern matches no file"),
                         ("@loop.txt", "nested deeper"), ("@missing.txt", "cannot read the list file")):
        with pytest.raises(paths.PathError, match=message):
            paths.expand([bad], wanted)
    names = paths.unique_names(found)
    assert [names[p] for p in found] == ["a__host.raw", "b__host.raw", "x.dmp", "notes.txt"]
    kept = paths.unique_names(found, taken={found[0]: "host.raw"})
    assert kept[found[0]] == "host.raw" and kept[found[1]] == "b__host.raw"


def stacked_output(path: str, *rows, build: Optional[int] = 19041) -> outputs.Output:
    return outputs.Output(path, list(rows), {"build": build, "image": path})


def test_stack_puts_rarest_first_and_suspicious_first_among_equals():
    common = row(1, r"\Callback\A", "a.sys", "a.sys+0x10")
    rare = row(1, r"\Callback\A", "evil.sys", "Hook", "multiple_on_exclusive,not_in_baseline")
    rare_clean = row(1, r"\Callback\B", "b.sys", "b.sys+0x20")
    fleet = [("h1", stacked_output("h1.json", common, rare, rare_clean)),
             ("h2", stacked_output("h2.json", common, row(5, r"\Callback\A", None, None, "outside_modules"))),
             ("h3", stacked_output("h3.json", common, dict(rare, Flags="freed"), build=7601))]
    found = stack.build(fleet, [("h4", "refused: not Windows")])
    assert [(e.object, e.module, e.symbol, e.count, e.images) for e in found.entries] == [
        (r"\Callback\A", stack.NO_MODULE, stack.NO_SYMBOL, 1, ["h2"]),
        (r"\Callback\A", "evil.sys", "Hook", 1, ["h1"]),
        (r"\Callback\B", "b.sys", "b.sys+0x20", 1, ["h1"]),
        (r"\Callback\A", "a.sys", "a.sys+0x10", 3, ["h1", "h2", "h3"]),
    ]
    assert found.entries[1].suspicious_flags == ["multiple_on_exclusive", "not_in_baseline"]
    assert found.entries[-1].builds == [7601, 19041]
    text = stack.render_text(found, rare=1).splitlines()
    assert text[0] == "3 images stacked (builds: 19041 x2, 7601 x1); 4 distinct registrations, rarest first."
    assert text[1] == "Not stacked: h4: refused: not Windows"
    assert text[-1].endswith("all 3") and text[-4].endswith("h2")
    document = stack.to_json(found)
    assert document["format"] == stack.JSON_FORMAT and document["registrations"][0]["module"] is None
    assert document["not_stacked"] == [{"name": "h4", "reason": "refused: not Windows"}]


def run_of(exit_code: Optional[int], stdout: str = "", stderr: str = "", error: Optional[str] = None) -> sweep.Run:
    return sweep.Run(exit_code, stdout, stderr, "2026-01-01T00:00:00+00:00", 1.0, "here", {}, error)


VERDICT = ("WARNING  volatility3.plugins.windows.callbackobjects: Verdict: build 19041, kernel PDB "
           "AEF579907CA143A7E870F25E5911D6DE-1; 1 callback objects; 1 registrations and 0 loose; 1 suspicious rows "
           "(not_in_baseline 1); routes: list complete (1 objects)")


def test_sidecars_record_status_build_and_the_reason_of_a_refusal(tmp_path):
    image = tmp_path / "host.raw"
    image.write_bytes(b"x")
    job = sweep.Job(str(image), "host.raw")
    rows = json.dumps([row(1, r"\Callback\A", "evil.sys", "Hook", "not_in_baseline")])
    meta = sweep.record(str(tmp_path), job, run_of(0, rows, "Volatility 3 Framework 2.28.2\n" + VERDICT))
    assert (meta["status"], meta["build"], meta["kernel_pdb"], meta["rows"], meta["suspicious_rows"]) == (
        "ok", 19041, {"guid": "AEF579907CA143A7E870F25E5911D6DE", "age": 1}, 1, 1)
    assert meta["flags"] == {"not_in_baseline": 1} and meta["warnings"] == [] and meta["output"] == "host.raw.json"
    assert json.loads((tmp_path / "host.raw.json").read_text()) == json.loads(rows)
    assert sweep.is_done(str(tmp_path), job, meta)
    assert not sweep.is_done(str(tmp_path), sweep.Job(str(image), "host.raw", sweep.RunOptions(plugin=("--no-scan",))), meta)

    refused = sweep.record(str(tmp_path), job, run_of(
        1, "", "Volatility 3 Framework 2.28.2\nUnsatisfied requirement plugins.CallbackObjects.kernel.layer_name: \n"))
    assert refused["status"] == "refused" and refused["output"] is None
    assert refused["reason"].startswith("Volatility found no Windows kernel in this file")
    assert not (tmp_path / "host.raw.json").exists()  # an earlier run's rows no longer describe the image
    assert not sweep.is_done(str(tmp_path), job, refused)
    assert sweep.finding(refused).startswith("Volatility found no Windows kernel")

    assert sweep.sidecar(job, run_of(0, "not json"), None)["reason"] == "the output is not a JSON list of rows"
    assert sweep.sidecar(job, run_of(None, error="timed out after 5 s"), None)["status"] == "failed"
    assert sweep.sidecar(job, run_of(-9), None)["reason"] == "Volatility was killed by signal 9"
    assert sweep.is_usage_error(run_of(2, "", "vol: error: unrecognized arguments: --bogus"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file left


DEGRADED_VERDICT = VERDICT.replace(
    "(not_in_baseline 1); routes:",
    "(not_in_baseline 1); evidence degraded (crash dump truncated (461 of 4,608 pages missing: 1.8 MiB, 10%), "
    "list incomplete (8 objects)); routes:")
REFUSAL_OUTPUT = (
    "WARNING  volatility3.plugins.windows.kernelread.diagnostics: Object headers unusable (no ObTypeIndexTable)\n"
    "Volatility was unable to read a requested page:\n"
    "0xf806adc2a360 in layer layer_name (windows.callbackobjects cannot give a verdict on this image: the crash dump is "
    "truncated: 2,304 of 4,608 pages (9.0 MiB, 50%) lie past the end of the file; the loaded-module list is unreadable. "
    "Likely cause: the missing part of the file. Try: re-acquire)\n\n\t* Memory smear during acquisition\n")


@pytest.mark.parametrize("exit_code, verdict", [(3, DEGRADED_VERDICT), (0, DEGRADED_VERDICT), (3, VERDICT)])
def test_a_degraded_verdict_is_never_ok(tmp_path, exit_code, verdict):
    """Exit status 3 (vol-callbackobjects) or a verdict line saying evidence degraded: status
    degraded, with the causes as its reason; its rows are written and stacked, and a resumed
    sweep does not run it again (the same file gives the same verdict)."""
    image = tmp_path / "host.raw"
    image.write_bytes(b"x")
    job = sweep.Job(str(image), "host.raw")
    rows = json.dumps([dict(row(1, r"\Callback\A", "a.sys", "a.sys+0x10"), Evidence="degraded")])
    meta = sweep.record(str(tmp_path), job, run_of(exit_code, rows, verdict))
    assert meta["status"] == "degraded" and meta["output"] == "host.raw.json" and meta["rows"] == 1
    assert meta["reason"].startswith("evidence degraded (")
    if verdict is DEGRADED_VERDICT:
        assert meta["reason"] == ("evidence degraded (crash dump truncated (461 of 4,608 pages missing: 1.8 MiB, 10%), "
                                  "list incomplete (8 objects))")
    assert sweep.is_done(str(tmp_path), job, meta)
    outcome = sweep.Outcome(job, meta, False)
    summary = sweep.summary([outcome], str(tmp_path))
    assert "0 ok, 1 degraded, 0 refused, 0 failed." in summary and "host.raw  degraded" in summary
    assert "evidence degraded (" in sweep.finding(meta)
    stacked = sweep.stack_of(str(tmp_path), [outcome])
    assert [image.evidence for image in stacked.images] == ["degraded"]
    assert "Stacked with degraded evidence (a registration missing there proves nothing): host.raw" in stack.render_text(stacked)


def test_a_refusal_gives_the_plugins_reason_then_the_layers_then_volatilitys(tmp_path):
    job = sweep.Job(str(tmp_path / "host.raw"), "host.raw")
    refused = sweep.sidecar(job, run_of(1, "", REFUSAL_OUTPUT), None)
    assert refused["status"] == "refused"
    assert refused["reason"].splitlines()[0].startswith(
        "windows.callbackobjects cannot give a verdict on this image: the crash dump is truncated: 2,304 of 4,608")
    assert sweep.finding(refused) == ("windows.callbackobjects cannot give a verdict on this image: the crash dump is "
                                      "truncated: 2,304 of 4,608 pages (9.0 MiB, 50%) lie past the end of the file; "
                                      "the loaded-module list is unreadable")
    triage = sweep.sidecar(job, run_of(1, "\nUnsatisfied requirement plugins.CallbackObjects.kernel.layer_name: \n",
                                       "WARNING  volatility3.plugins.layers.crashdump: file:///x/triage.dmp: not a full or "
                                       "kernel memory dump: cannot open this 64-bit Windows crash dump of DumpType 4\n"
                                       "Unable to validate the plugin requirements: ['x']\n"), None)
    assert sweep.finding(triage) == "not a full or kernel memory dump: cannot open this 64-bit Windows crash dump of DumpType 4"
    no_symbols = sweep.sidecar(job, run_of(1, "\nUnsatisfied requirement plugins.CallbackObjects.kernel.symbol_table_name: \n"), None)
    assert sweep.finding(no_symbols).startswith("Volatility found a Windows kernel but no symbol table for it")
    no_kernel = sweep.sidecar(job, run_of(1, "\nUnsatisfied requirement plugins.CallbackObjects.kernel.layer_name: \n"
                                             "Unsatisfied requirement plugins.CallbackObjects.kernel.symbol_table_name: \n"), None)
    assert sweep.finding(no_kernel).startswith("Volatility found no Windows kernel in this file"), "never a symbols hint"


def test_an_image_that_changed_since_its_sweep_is_swept_again(tmp_path):
    image = tmp_path / "host.raw"
    image.write_bytes(b"x")
    job = sweep.Job(str(image), "host.raw")
    meta = sweep.record(str(tmp_path), job, run_of(0, json.dumps([row(1, r"\Callback\A", "a.sys", "a.sys+0x10")])))
    image.write_bytes(b"xy")
    assert not sweep.is_done(str(tmp_path), job, meta)


def test_sweep_refuses_options_it_sets_itself():
    for option in ("-f", "--renderer=json", "windows.callbackobjects"):
        with pytest.raises(sweep.SweepError):
            sweep.check_volatility_options(["--offline", option])
    sweep.check_volatility_options(["--offline", "-s", "symbols", "--cache-path", "cache"])


def test_progress_without_a_terminal_writes_one_line_per_image():
    stream = io.StringIO()
    progress = Progress(2, stream, interactive=False)
    progress.start()
    progress.update("a.raw", "ok", 1.25)
    progress.update("b.raw", "refused", 0.5)
    assert stream.getvalue() == "[1/2] a.raw: ok (1.2 s)\n[2/2] b.raw: refused (0.5 s)\n"
    assert progress.line().startswith("[" + "#" * 30 + "] 2/2 images (1 refused), ")


def test_ctrl_c_reaching_a_local_volatility_process_stops_the_sweep_without_recording_it(tmp_path, monkeypatch):
    """Ctrl-C goes to the whole process group: the Volatility process may die of it (-SIGINT)
    before the sweep's own thread sees it. That image did not fail: nothing is recorded."""
    import signal

    images = [tmp_path / "a.raw", tmp_path / "b.raw"]
    for image in images:
        image.write_bytes(b"x")
    rows = json.dumps([row(1, r"\Callback\A", "a.sys", "a.sys+0x10")])
    results = iter([run_of(0, rows), run_of(-signal.SIGINT)])
    monkeypatch.setattr(sweep, "execute", lambda jobs, settings: ((job, next(results)) for job in jobs))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep([str(image) for image in images], sweep.Settings(str(out), 1), progress_stream=io.StringIO())
    assert sorted(p.name for p in out.iterdir()) == ["a.raw.json", "a.raw.meta.json"]


def test_an_unchanged_baseline_is_read_once(tmp_path, monkeypatch):
    """Volatility checks the plugin's requirements twice before the run: a large baseline is not
    parsed three times; a changed file is read again."""
    output = write(tmp_path / "g.json", [row(1, r"\Callback\A", "a.sys", "a.sys+0x10")])
    first = baseline.load([str(tmp_path)])
    reads = []
    monkeypatch.setattr(outputs, "read_output", lambda path: reads.append(path) or outputs.Output(path, [], None))
    assert baseline.load([str(tmp_path)]) is first and reads == []
    os.utime(output, ns=(1, 1))
    with pytest.raises(outputs.OutputError, match="no registration"):
        baseline.load([str(tmp_path)])
    assert reads == [str(output)]
