"""The signing agent reads a job's identity from ``scontrol show job -o``, where the job's own
name (before the fields it reads) and comment (after them) are free text: a field that appears
twice is refused, never taken from the job's text. Against a test double of scontrol."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cdk_trn_runtime.provenance.agent_client import AgentError
from cdk_trn_runtime.provenance.peer_identity import Slurm

REAL = (
    "JobId=42 JobName={name} UserId=trn(2000) GroupId=trn(2000) MCS_label=N/A "
    "JobState=CANCELLED Reason=None NodeList=ip-10-0-0-7 WorkDir=/home/trn Comment={comment}\n"
)


def slurm_double(name: str = "train", comment: str = "none") -> Slurm:
    """Slurm whose scontrol (a test double) describes job 42 with this name and comment."""

    def run(argv: Sequence[str]) -> str:
        if list(argv[:3]) == ["scontrol", "show", "job"]:
            return REAL.format(name=name, comment=comment)
        if list(argv[:3]) == ["scontrol", "show", "hostnames"]:
            return argv[3] + "\n"
        raise AssertionError(argv)

    return Slurm("ip-10-0-0-7", run)


def test_the_fields_are_read_as_slurm_printed_them():
    job = slurm_double().job("42")
    assert (job.uid, job.name, job.state, job.nodes) == (
        2000,
        "train",
        "CANCELLED",
        ("ip-10-0-0-7",),
    )


@pytest.mark.parametrize(
    ("name", "comment"),
    [
        ("train", "x JobState=RUNNING NodeList=ip-10-0-0-9"),  # the comment, after the fields
        ("x JobState=RUNNING", "none"),  # the name, before them
        ("train", "y JobName=signer"),
        ("train", "y UserId=root(0)"),
    ],
)
def test_a_field_the_job_repeats_in_its_name_or_comment_is_refused(name, comment):
    with pytest.raises(AgentError, match="more than once"):
        slurm_double(name, comment).job("42")


def test_a_field_name_inside_a_value_is_not_a_field():
    # WorkDir=/a/NodeList=b holds no field boundary before NodeList.
    slurm = slurm_double(comment="/a/NodeList=ip-10-0-0-9")
    assert slurm.job("42").nodes == ("ip-10-0-0-7",)
