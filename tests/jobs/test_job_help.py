"""Every job this suite covers lists each flag with a help text and its default in ``--help`` (issue 21, item 8)."""

import re

import pytest

from jobs import batch_generate, generate, make_manifest, preprocess

JOBS = {"batch_generate": batch_generate, "generate": generate, "make_manifest": make_manifest,
        "preprocess": preprocess}  # fmt: skip
# An option entry of argparse's help: two spaces, then the option strings.
OPTION = re.compile(r"^  (-{1,2}[\w-]+)")


def option_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its help text (the rest of its line and the indented lines under it)."""
    entries, current = {}, None
    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1)
            entries[current] = line[match.end() :]
        elif current and line.startswith(" " * 6) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_flag_has_help_and_shows_its_default(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        JOBS[name].parse_args(["--help"])
    assert exit_info.value.code == 0
    entries = option_entries(capsys.readouterr().out)
    assert "--debug" in entries and len(entries) > 3
    for flag, text in entries.items():
        if flag in ("-h", "--help"):
            continue
        words = re.sub(r"^[\w\s,{}<>.=|-]*?\s{2,}", "", text.strip())
        assert "(default:" in text, f"{name} {flag}: no default shown: {text!r}"
        assert len(words.split("(default:")[0].strip()) > 3, f"{name} {flag}: no help text: {text!r}"
