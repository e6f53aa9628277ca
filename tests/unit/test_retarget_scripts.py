"""A venv copied from the host's cache runs its own console scripts, not the cache's python."""

from __future__ import annotations

import os
import subprocess
import sys
import venv

from deploy.commands import files


def test_scripts_copied_with_a_venv_run_with_the_copy_s_python(tmp_path):
    built = tmp_path / "cache" / "abc.tmp-1"
    venv.create(built, with_pip=False, symlinks=True)
    script = built / "bin" / "hello"
    script.write_text(f"#!{built}/bin/python\nimport sys\nprint(sys.prefix)\n")
    script.chmod(0o755)
    (built / "bin" / "notes.txt").write_text("#!/bin/sh with spaces stays\n")
    copy = tmp_path / "env" / "venvs" / "abc"
    copy.parent.mkdir(parents=True)
    subprocess.run(files.copy_tree(str(built), str(copy)), check=True)
    os.rename(built, tmp_path / "cache" / "abc")  # the build dir is gone, as after its rename

    subprocess.run(
        files.retarget_scripts(sys.executable, str(copy / "bin"), f"{copy}/bin/python"), check=True
    )

    out = subprocess.run([str(copy / "bin" / "hello")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(copy)
    assert os.access(copy / "bin" / "hello", os.X_OK)
    assert os.path.islink(copy / "bin" / "python"), "the venv's python symlink is left alone"
    assert (copy / "bin" / "notes.txt").read_text() == "#!/bin/sh with spaces stays\n"
