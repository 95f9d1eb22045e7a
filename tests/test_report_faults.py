"""The readers of the store (`python -m src.figures`, `python -m src.reproduce report`,
`python -m src.evaluate`) against faults, each through its real main() on a real MLflow store in a
temp folder: a store path with no store, or a file that is not an MLflow store, is one line and
exit 2 with nothing created or changed; a report never replaces the committed one with fewer
studies, and another store's report goes beside that store; a plan file that cannot be read is one
line; a sweep whose runs all failed links no figure; damaged artifacts are named in one line."""

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from helpers.configs import ROOT, TINY
from helpers.store import client_for, runs_in

from src import evaluate, figures, reproduce, schema
from src.claims import NOT_RUN
from src.studies import CONFIG, load_reproduction
from src.stores import MLFLOW_TABLES
from src.tracking import tracked_run
from src.train import train

REPRODUCTION = load_reproduction()
SMOKE = "smoke"  # the experiment the smoke preset logs to


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what a refusal must leave."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err[len("error: "):-1]


# --- stores that are not there, or not MLflow's ----------------------------------------------


def another_applications_database(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        connection.execute("INSERT INTO notes (text) VALUES ('keep me')")
    connection.close()


STORES = {  # fault -> (how to make it at a path, what the one line says)
    "missing": (lambda db: None, "no MLflow store at {db}"),
    "a folder": (lambda db: db.mkdir(), "{db} is a folder"),
    "an empty file": (lambda db: db.write_bytes(b""), "{db} is not an MLflow store (an SQLite file without MLflow's"),
    "another application's SQLite database": (another_applications_database, "{db} is not an MLflow store"),
    "not a database": (lambda db: db.write_bytes(b"not a database at all " * 100),
                       "{db} is not an SQLite database (file is not a database)"),
}
READERS = {  # reader -> its main and arguments reading the store at `uri`, writing under `out`
    "figures": lambda uri, out: figures.main([f"--tracking-uri={uri}", f"--output-dir={out}"]),
    "reproduce report": lambda uri, out: reproduce.main(["report", "--tracking-uri", uri, "--output-dir", str(out)]),
    "evaluate": lambda uri, out: evaluate.main(["run_id=0123abcd", f"tracking.uri={uri}", f"paths.output_dir={out}"]),
}


@pytest.mark.parametrize("fault", STORES)
@pytest.mark.parametrize("reader", READERS)
def test_a_reader_refuses_what_is_not_an_mlflow_store_and_creates_nothing(reader, fault, tmp_path, capsys):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    make, message = STORES[fault]
    make(db)
    before = snapshot(tmp_path)
    assert READERS[reader](f"sqlite:///{db}", tmp_path / "out") == 2
    assert message.format(db=db) in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before  # no store, table, lock file or output folder made
    if fault == "another application's SQLite database":
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        connection.close()
        assert tables == ["notes"]


def test_a_reader_of_an_mlflow_store_adds_nothing_beside_it(tmp_path, blank_store, capsys):
    """A real (empty) MLflow store: read, with no lock file or anything else made next to it."""
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    assert set(MLFLOW_TABLES) <= {row[0] for row in sqlite3.connect(blank_store).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    before = snapshot(tmp_path)
    assert figures.main([f"--tracking-uri=sqlite:///{tmp_path}/mlflow.db", "--experiment=nope",
                         f"--output-dir={tmp_path}/figures"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("no experiment 'nope'")
    assert snapshot(tmp_path).keys() == before.keys()


# --- the report never replaces the committed one with less ------------------------------------


@pytest.fixture
def repository(tmp_path, monkeypatch, blank_store):
    """tmp_path as the repository and working folder: the committed docs/reproduction.md and its
    figures copied there, README.md with the blocks --write-readme fills, and the reproduction's
    own store (outputs/mlflow.db) holding no run."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "README.md").write_text("<!-- reproduction:summary -->\nmeasured\n<!-- /reproduction:summary -->\n"
                                        "<!-- reproduction:table -->\nmeasured\n<!-- /reproduction:table -->\n")
    (tmp_path / "outputs").mkdir()
    shutil.copy(blank_store, tmp_path / "outputs" / "mlflow.db")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def committed_studies(doc: Path) -> set[str]:
    """The studies the committed report lists with their sweep commands (not `not run`)."""
    return {name for name in REPRODUCTION["studies"] if f"- {name}: `python -m src.run" in doc.read_text()}


def test_a_report_with_fewer_studies_does_not_replace_the_committed_one(repository, capsys):
    doc = repository / "docs" / "reproduction.md"
    had = committed_studies(doc)
    assert len(had) >= 2  # the committed report has runs to lose
    before = snapshot(repository)
    for extra in ([], ["--write-readme"], ["--output-dir", "outputs"]):
        assert reproduce.main(["report", *extra]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"{doc} has runs of {len(had)} studies, sqlite:///outputs/mlflow.db of 0 of them (not ")
        assert line.endswith("not replaced; --allow-fewer replaces it, --output PATH writes elsewhere")
        assert snapshot(repository) == before  # no figure removed, no file written, README as it was

    assert reproduce.main(["report", "--allow-fewer"]) == 0  # on purpose
    assert committed_studies(doc) == set() and f"| {NOT_RUN} |" in doc.read_text()
    assert not (repository / "docs" / "reproduction" / "default").exists()


def test_another_stores_report_goes_beside_that_store_never_over_docs(repository, blank_store, capsys):
    other = repository / "elsewhere"
    other.mkdir()
    shutil.copy(blank_store, other / "mlflow.db")
    before = snapshot(repository / "docs")
    assert reproduce.main(["report", "--output-dir", str(other)]) == 0
    assert f"wrote {other}/report/reproduction.md" in capsys.readouterr().out
    assert (other / "report" / "reproduction.md").is_file()
    assert reproduce.main(["report", "--tracking-uri", f"sqlite:///{other}/mlflow.db"]) == 0  # under outputs/
    assert (repository / "outputs" / "report" / "reproduction.md").is_file()
    assert snapshot(repository / "docs") == before
    # README's tables go with the committed report only
    assert reproduce.main(["report", "--output-dir", str(other), "--write-readme"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        f"--write-readme: README.md's tables go with {repository}/docs/reproduction.md, not ")
    # a report whose figures would land on each study's src.figures output
    assert reproduce.main(["report", "--output-dir", str(other), "--output", str(other / "reproduction.md")]) == 2
    assert "where each study's src.figures output is written" in one_error_line(capsys.readouterr().err)


# --- the plan file ------------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    (None, "cannot read it (No such file or directory)"),
    ("studies: [1\nseeds: 2\n", ":2:"),  # where YAML found the error: line 2
    ("- a list\n", "not a reproduction plan like conf/reproduction.yaml (TypeError: "),
    ("", "not a reproduction plan like conf/reproduction.yaml (KeyError: 'studies')"),
    ("studies: {}\nseeds: [0]\n", "not a reproduction plan like conf/reproduction.yaml (no experiment_prefix, jobs, "
                                  "tables, claims, ablation, noise_dial)"),
    (CONFIG.read_text().replace("lists: [ablation]", "lists: [ablations]", 1),
     "studies.ablation_batch_norm.lists: unknown list ablations (lists: reproduction, ablation, noise_dial)"),
], ids=["missing", "not YAML", "a list", "empty", "incomplete", "unknown list"])
@pytest.mark.parametrize("command", [["report"], ["run", "--dry-run"]])
def test_a_plan_file_that_cannot_be_used_is_one_line(command, text, message, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    if text is not None:
        plan.write_text(text)
    assert reproduce.main([*command, "--config", str(plan)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"--config {plan}") and message in line, line


# --- a sweep whose runs all failed --------------------------------------------------------------


def test_a_sweep_whose_runs_all_failed_says_so_and_links_no_figure(tmp_path, make_cfg, capsys):
    for seed in (0, 1):
        cfg = make_cfg(*TINY, "schedule=decay_lr", f"trainer.seed={seed}", output_dir=tmp_path)
        tags = {schema.SCHEDULE_TAG: "decay_lr", schema.SEED_TAG: str(seed), schema.SWEEP_TAG: "all-failed",
                schema.CONFIG_HASH_TAG: f"all-failed-{seed}"}
        with pytest.raises(MemoryError):
            with tracked_run(cfg, tags, run_name=f"decay_lr seed={seed}"):
                raise MemoryError("simulated out of memory")
    assert figures.main([f"paths.output_dir={tmp_path}", f"--output-dir={tmp_path}/figures"]) == 0
    folder = tmp_path / "figures" / "all-failed"
    md = (folder / "report.md").read_text()
    assert "**No run finished**" in md and "No figures: no run of this group finished." in md
    assert not list(folder.rglob("*.png"))
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (folder / link).exists(), link


# --- damaged artifacts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One real smoke run with its model: (its run, the overrides that find its store, its model's pt2 file)."""
    from helpers.configs import compose_config

    store = tmp_path_factory.mktemp("evaluate")
    train(compose_config("experiment=smoke", "trainer.threads=1", f"paths.output_dir={store}",
                         f"paths.data_dir={data_dir}"))
    [run] = runs_in(store, experiment=SMOKE)
    [output] = run.outputs.model_outputs
    location = client_for(store).get_logged_model(output.model_id).artifact_location
    model_file = Path(unquote(urlsplit(location).path)) / schema.MODEL_FILE
    return run, [f"paths.output_dir={store}", f"paths.data_dir={data_dir}", "tracking.experiment=smoke"], model_file


def artifacts_of(run) -> Path:
    return Path(unquote(urlsplit(run.info.artifact_uri).path))


@pytest.mark.slow  # ~15 s on 2 idle cores: kept out of the default suite's 5 minutes
@pytest.mark.parametrize("damage", [b"", b"\x80\x04not a pickle", "truncated"])
def test_a_model_that_cannot_be_read_is_named_in_one_line(trained, damage):
    """The command itself: torch.export logs what it cannot read to the process's stderr."""
    run, overrides, weights = trained
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2] if damage == "truncated" else damage)
    try:
        command = subprocess.run([sys.executable, "-m", "src.evaluate", f"run_id={run.info.run_id}", *overrides],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        weights.write_bytes(good)
    assert command.returncode == 2
    line = one_error_line(command.stderr)
    assert line.startswith(f"run_id={run.info.run_id}: {weights} is not a model torch can read ("), line


def test_a_run_or_model_whose_artifacts_are_gone_says_so(trained, capsys):
    run, overrides, weights = trained
    for folder, gone in ((artifacts_of(run), "its artifacts are gone"),
                         (weights.parent.parent, "its model's artifacts are gone")):
        moved = folder.with_name("moved away")
        folder.rename(moved)
        try:
            assert evaluate.main([f"run_id={run.info.run_id}", *overrides]) == 2
        finally:
            moved.rename(folder)
        assert one_error_line(capsys.readouterr().err) == (f"run_id={run.info.run_id}: {gone}: nothing at {folder} "
                                                           "(deleted or moved)")
    kept = weights.read_bytes()
    weights.unlink()  # the model's file alone
    try:
        assert evaluate.main([f"run_id={run.info.run_id}", *overrides]) == 2
    finally:
        weights.write_bytes(kept)
    assert one_error_line(capsys.readouterr().err) == f"run_id={run.info.run_id}: {weights} is gone (deleted or moved)"
    assert evaluate.main([f"run_id={run.info.run_id}", *overrides]) == 0  # whole again
    capsys.readouterr()
