"""replication.arguments: the range checks every command's numeric options share, and the --help every command gives."""
import argparse
import importlib
import importlib.util
import math
import re
import shlex
from pathlib import Path

import pytest

from replication.__main__ import COMMANDS
from replication.arguments import HelpFormatter, model_config, number, positive_int


def test_number_takes_its_bounds_as_documented():
    """`low` is allowed unless `above`, `high` is always allowed; non-finite text and whole-number text that is not
    whole are refused (prepare's --threshold is number(float, 0, 1, above=True), --size number(int, 2))."""
    threshold, size = number(float, 0, 1, above=True), number(int, 2)
    assert threshold("1") == 1.0 and threshold("1e-9") == 1e-9 and size("2") == 2 and positive_int("1") == 1
    for parse, text in ((threshold, "0"), (threshold, "1.0000001"), (size, "1"), (size, "2.5"), (size, "x"),
                        (number(float, 0), "inf"), (number(float, 0), "nan"), (number(float, -math.inf), "-inf")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            parse(text)


@pytest.mark.parametrize("command", ["counts", "pretrain", "bench"])
def test_an_unknown_model_config_is_one_line_naming_the_known_ones(command, capsys):
    """`--config foo` was a KeyError traceback (bench printed a measured peak first)."""
    assert model_config("demo-tiny") == "demo-tiny"
    cli = importlib.import_module(COMMANDS[command][0]).cli
    with pytest.raises(SystemExit) as exit_:
        cli(["--config", "foo", "--device", "cpu"] if command == "bench" else ["--config", "foo"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python3 -m replication {command}: error: argument --config: expected one of PE-Core-T16-384, "
        "PE-Core-S16-384, PE-Core-B16-224, PE-Core-L14-336, PE-Core-G14-448, demo-tiny, got 'foo'")


@pytest.mark.parametrize("command, argv, expected", [
    ("demo-data", ["--seed", "-3"], "--seed: expected a whole number >= 0, got '-3'"),
    ("pretrain", ["--seed", "-1"], "--seed: expected a whole number >= 0, got '-1'"),
    ("bench", ["--data-loading", "--workers", "-1"], "--workers: expected a whole number >= 0, got '-1'"),
    ("bench", ["--data-loading", "--loader-images", "0"], "--loader-images: expected a whole number >= 1, got '0'")])
def test_a_seed_or_count_out_of_range_is_refused_as_it_is_parsed(command, argv, expected, tmp_path, capsys):
    """A negative seed was numpy's ValueError traceback (demo-data, pretrain); bench's data loading failed with a
    traceback after the measurements had run."""
    cli = importlib.import_module(COMMANDS[command][0]).cli
    # what the command would do if the value were taken: write to tmp_path, read nothing there, measure briefly
    where = {"demo-data": ["--out", str(tmp_path / "raw")], "pretrain": ["--prepared", str(tmp_path)],
             "bench": ["--device", "cpu", "--config", "demo-tiny", "--methods", "lp", "--batch", "2", "--steps", "1",
                       "--warmup", "0", "--dtype", "fp32", "--out", str(tmp_path / "bench.json")]}[command]
    with pytest.raises(SystemExit) as exit_:
        cli(where + argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python3 -m replication {command}: error: argument {expected}"


class _Parsed(Exception):
    pass


def _parser_of(cli, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser a command's cli builds, caught as it parses (nothing runs)."""
    def caught(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    with pytest.raises(_Parsed) as got:
        cli([])
    return got.value.args[0]


def _readme_commands(prefix: str = "python3 -m replication") -> list[str]:
    """Every full ``prefix ...`` line of the READMEs' code blocks: continuations joined, `&&` chains split, shell
    variables (`B="..."`, then `$B ...`) expanded, comments dropped; synopsis lines (`[...]`, `a|b`) left out."""
    root = Path(__file__).resolve().parents[1]
    commands = []
    for readme in (root / "README.md", root / "benchmarks" / "README.md"):
        blocks = readme.read_text().split("```")[1::2]  # inside the fences
        variables = {}  # a block may use one an earlier block set
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if "=" in line.split(" ")[0]:  # B="python3 -m replication bench ..."
                    name, value = line.split("=", 1)
                    variables[name] = shlex.split(value)[0]
                    continue
                for name, value in variables.items():
                    line = line.replace(f"${name}", value)
                for part in line.split("&&"):
                    part = part.strip()
                    if part.startswith(prefix) and "[" not in part and "|" not in part:
                        commands.append(part)
    return commands


def test_every_command_line_the_readmes_show_is_accepted(monkeypatch):
    """A reader copies these lines: each must get past its command's argument parser (an option renamed or removed
    would otherwise leave the README wrong until a user hits it). Nothing runs: parsing is stopped there."""
    commands = _readme_commands()
    assert len(commands) >= 15 and any("--checkpoint-blocks all --out b2a.json" in c for c in commands)
    original = argparse.ArgumentParser.parse_args

    def parsed(self, *args, **kwargs):
        raise _Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    for line in commands:
        argv = shlex.split(line)[3:]
        cli = importlib.import_module(COMMANDS[argv[0]][0]).cli
        with pytest.raises(_Parsed):
            cli(argv[1:])


def _peft_compare():
    """benchmarks/peft_compare.py as a module (a script beside the library, which imports peft)."""
    pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location(
        "peft_compare", Path(__file__).resolve().parents[1] / "benchmarks" / "peft_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_peft_compare_line_the_readmes_show_is_accepted(monkeypatch):
    """The READMEs' `python3 benchmarks/peft_compare.py ...` lines, as the `python3 -m replication` ones above."""
    commands = _readme_commands("python3 benchmarks/peft_compare.py")
    assert len(commands) >= 2 and any("--checkpoint-blocks profile" in c for c in commands)
    main = _peft_compare().main
    original = argparse.ArgumentParser.parse_args

    def parsed(self, *args, **kwargs):
        raise _Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    for line in commands:
        with pytest.raises(_Parsed):
            main(shlex.split(line)[2:])


def test_the_readmes_name_gpu_sh_s_steps_in_its_order():
    """What `bash benchmarks/gpu.sh` runs, and in which order, as both READMEs list it: the step names a reader
    passes to it (a renamed or reordered step would leave them wrong)."""
    root = Path(__file__).resolve().parents[1]
    steps = re.search(r'^STEPS="([^"]+)"', (root / "benchmarks" / "gpu.sh").read_text(), re.M).group(1).split()
    bench_readme = (root / "benchmarks" / "README.md").read_text()
    assert f"name some: {' '.join(steps)}" in bench_readme
    assert re.findall(r"^\| `([a-z-]+)` \| `", bench_readme, re.M) == steps  # the table of steps
    order = (root / "README.md").read_text().split("Its steps, in the order it runs them:")[1].split(". The ")[0]
    assert re.findall(r"`([a-z-]+)`\s+(?:measures|times|turns|runs)", order) == steps


def test_every_option_of_every_command_has_help_and_its_default(monkeypatch):
    """A reader of `--help` learns what each option does and the value it takes when not given, for every command
    and peft_compare (`pretrain --help` once listed bare flags and `prepare --help` no default)."""
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option: argparse wraps long paths at their hyphens
    clis = {name: importlib.import_module(module).cli for name, (module, _) in COMMANDS.items()}
    pytest.importorskip("peft")  # benchmarks/peft_compare.py imports it; imported from its path, a script
    spec = importlib.util.spec_from_file_location(
        "peft_compare", Path(__file__).resolve().parents[1] / "benchmarks" / "peft_compare.py")
    peft_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peft_compare)
    clis["peft_compare"] = peft_compare.main
    for name, cli in clis.items():
        parser = _parser_of(cli, monkeypatch)
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help and action.help.strip(), (name, action.option_strings)
            if action.default is None or action.default is False:
                continue
            assert (f"(default: {action.default})" in text) != ("default" in action.help), (name, action.option_strings)
    # the formatter's own rule, on values `in` would confuse with False (0) or leave out (a list)
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--epochs", nargs="+", default=[11, 100], help="epochs")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--path", help="a path")
    p.add_argument("--amp", default="fp16", help="dtype (default: the profile's)")
    text = " ".join(p.format_help().split())  # (at COLUMNS=10000)
    assert "seed (default: 0)" in text and "epochs (default: [11, 100])" in text
    assert "a switch --path" in text and text.endswith("a path --amp AMP dtype (default: the profile's)")
