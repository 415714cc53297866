"""The docs: docs/configuration.md generated from the schema (stale or undocumented keys fail), a short README."""

from pathlib import Path

from orchestrator import config_doc
from orchestrator.config import RunConfig, get_dotted

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_reference_is_up_to_date():
    assert DOC.read_text() == config_doc.render(), "docs/configuration.md is stale: run `make docs`"


def test_every_key_has_a_type_a_default_and_a_meaning():
    dump = RunConfig().model_dump(mode="json")
    keys = [key for section, field in RunConfig.model_fields.items() for key, *_ in config_doc.rows(field.annotation, section)]
    assert len(keys) == len(set(keys)) > 100
    for section, field in RunConfig.model_fields.items():
        for key, kind, default, meaning in config_doc.rows(field.annotation, section):
            assert kind and default and meaning, f"{key} needs a #: comment in orchestrator/sections/"
            assert get_dotted(dump, key, "<missing>") != "<missing>", key


def test_a_new_comment_reaches_the_reference():
    class Demo(config_doc.config.Section):
        #: above
        #: and more
        a: int = 1
        b: str = "x"  # after
        c: bool = False

    assert config_doc.field_comments(Demo) == {"a": "above and more", "b": "after", "c": ""}
    assert [r[:3] for r in config_doc.rows(Demo, "demo")] == [("demo.a", "int", "1"), ("demo.b", "str", '"x"'),
                                                            ("demo.c", "bool", "false")]


def test_the_readme_stays_short_and_its_links_resolve():
    import re

    root = DOC.parents[1]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((root / link).exists() for link in links), [l for l in links if not (root / l).exists()]
    docs = {p.name for p in (root / "docs").glob("*.md")}
    assert docs <= {Path(l).name for l in links}, f"docs not linked from the README: {docs - {Path(l).name for l in links}}"
