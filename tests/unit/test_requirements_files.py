"""What a requirements file pulls in besides packages, read as pip reads it."""

from __future__ import annotations

from deploy.requirements import includes, installs_a_local_path, local_paths


def test_includes_are_every_r_and_c_form_and_never_a_url() -> None:
    text = (
        "-r base.txt\n"
        "--requirement=dev.txt  # the tools\n"
        "-cpins.txt\n"
        "--constraint \\\n    more/pins.txt\n"
        "-r https://example.org/reqs.txt\n"
        "# -r commented.txt\n"
        "--require-hashes\n"
        "flask  # -r not-this.txt\n"
    )
    assert includes(text) == ["base.txt", "dev.txt", "pins.txt", "more/pins.txt"]
    assert includes(text, constraints=False) == ["base.txt", "dev.txt"]


def test_a_line_installing_the_repository_itself_is_seen() -> None:
    for line in ("-e .", "--editable ./libs/x", ".", "./x", "/abs/pkg", "file:../pkg", "-e=."):
        assert installs_a_local_path(f"flask\n{line}\n"), line
    for line in ("flask", "django>=5", "-e git+https://example.org/x.git#egg=x", "# ."):
        assert not installs_a_local_path(f"{line}\n"), line


def test_the_local_paths_are_the_paths_as_written() -> None:
    text = (
        "-e .\n--editable ./libs/x[extra]\n./y ; python_version > '3'\n"
        "file:../pkg\nfile:///abs/q\n./z#egg=z\nflask\n"
    )
    assert local_paths(text) == [".", "./libs/x", "./y", "../pkg", "/abs/q", "./z"]
