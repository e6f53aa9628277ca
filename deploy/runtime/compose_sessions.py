"""Where a compose release's database sessions are when its project runs on an SSH host.

The project's PostgreSQL publishes on that host's loopback only, so this machine cannot ask it:
the release's sessions there are counted through the host, by psql in the postgres container.
Every other environment's cluster this machine reaches is watched from here while smoke runs, as
probes/sessions does for a release on this machine, with the same verdict.
"""

from __future__ import annotations

from deploy.commands import compose as cmd
from deploy.config import Project
from deploy.errors import DeployError
from deploy.probes import sessions
from deploy.runtime.compose_backups import role_and_database
from deploy.runtime.compose_project import ComposeProject

COUNT_TIMEOUT_S = 30


def counter(rt: ComposeProject) -> sessions.Count:
    """How many sessions carry a name on the project's cluster: one command on its host per ask
    (psql over the container's own socket, as its role: no password on any command line); None
    when the host, the engine or the container does not answer."""
    user, database = role_and_database(rt)

    def count(name: str) -> int | None:
        try:
            res = rt.run(
                lambda c: cmd.sessions_in_container(
                    c, user=user, database=database, application_name=name
                ),
                timeout=COUNT_TIMEOUT_S,
            )
        except DeployError:
            return None
        line = (res.stdout.strip().splitlines() or [""])[-1].strip()
        return int(line) if res.ok and line.isdigit() else None

    return count


def watch(rt: ComposeProject, proj: Project, release: str) -> sessions.Watch:
    """The watch of release's sessions: every other environment's cluster on this machine
    sampled while the probes run, the project's own counted on its host once they are over
    (the sessions of a pool are still there; one command, not one every few milliseconds)."""
    return sessions.watch(
        rt.cfg,
        release,
        sessions.neighbours(proj, rt.cfg.name),
        own_count=counter(rt),
        settings=sessions.settings_at(proj, rt.cfg.name),
    )
