import subprocess
import sys

import pytest

from hpa_embed.cli import get_parser, main


def subcommands():
    parser = get_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(set(action.choices))


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert "usage: hpa-embed" in capsys.readouterr().out


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hpa_embed", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("hpa_embed ")


def test_analyse_prints_table_and_writes_plots(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    csv.write_text("ID,Label\na,0|16\nb,0\nc,0|16\n")
    assert main(["analyse", str(csv), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "Nucleoplasm + Cytosol" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "class_counts.png", "labels_per_image.png", "top_combinations.png",
    ]


def test_bad_input_exits_2_with_file_named(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    csv.write_text("ID,Label\na,42\n")
    assert main(["analyse", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "train.csv, line 2: label 42" in err


def test_channels_on_real_field(hpa_real, tmp_path):
    assert main(["channels", str(hpa_real / "fov"), "57_F11_1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "57_F11_1_composite.png").stat().st_size > 10_000
