"""The sync set: top paths minus gitignore-style exclude rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmsync.config.model import Config
from bmsync.config.parse import parse
from bmsync.core.excludes import PatternError, Rule, SyncSet


def rules(*patterns: str) -> list[Rule]:
    return [Rule(p) for p in patterns]


def syncset(paths: list[str], *patterns: str) -> SyncSet:
    return SyncSet.build(paths, rules(*patterns))


# --- Rule --------------------------------------------------------------------


def test_rule_parses_negation_and_dir_only() -> None:
    rule = Rule("!/etc/network/", "why")
    assert rule.negate
    assert rule.dir_only
    assert rule.reason == "why"
    plain = Rule("*.swp")
    assert not plain.negate
    assert not plain.dir_only


@pytest.mark.parametrize(
    "path",
    [b"x.swp", b"etc/x.swp", b"etc/vim/.x.swp", b"etc/a/b/c/d.swp", b".swp"],
)
def test_unanchored_pattern_matches_at_any_depth(path: bytes) -> None:
    assert Rule("*.swp").matches(path, is_dir=False)
    assert Rule("*.swp").matches(path, is_dir=True)


@pytest.mark.parametrize("path", [b"etc/x.swpx", b"etc/x.swp/y", b"etc/xswp"])
def test_unanchored_pattern_matches_whole_names_only(path: bytes) -> None:
    assert not Rule("*.swp").matches(path, is_dir=False)


def test_anchored_pattern_matches_only_at_its_place() -> None:
    rule = Rule("/etc/hostname")
    assert rule.matches(b"etc/hostname", is_dir=False)
    assert not rule.matches(b"etc/x/hostname", is_dir=False)
    assert not rule.matches(b"hostname", is_dir=False)
    assert not rule.matches(b"srv/etc/hostname", is_dir=False)
    assert not rule.matches(b"etc/hostname2", is_dir=False)


def test_pattern_with_inner_slash_is_anchored_without_leading_slash() -> None:
    rule = Rule("etc/ssh/ssh_host_*")
    assert rule.matches(b"etc/ssh/ssh_host_rsa_key", is_dir=False)
    assert not rule.matches(b"srv/etc/ssh/ssh_host_rsa_key", is_dir=False)


def test_star_and_question_mark_do_not_cross_slashes() -> None:
    assert Rule("/etc/*.conf").matches(b"etc/a.conf", is_dir=False)
    assert not Rule("/etc/*.conf").matches(b"etc/sub/a.conf", is_dir=False)
    assert Rule("/etc/a?c").matches(b"etc/abc", is_dir=False)
    assert not Rule("/etc/a?c").matches(b"etc/a/c", is_dir=False)
    assert not Rule("/etc/a?c").matches(b"etc/ac", is_dir=False)


def test_trailing_slash_matches_directories_only() -> None:
    rule = Rule("/etc/network/")
    assert rule.matches(b"etc/network", is_dir=True)
    assert not rule.matches(b"etc/network", is_dir=False)
    unanchored = Rule("cache/")
    assert unanchored.matches(b"etc/a/cache", is_dir=True)
    assert not unanchored.matches(b"etc/a/cache", is_dir=False)


def test_double_star_in_the_middle_spans_directories() -> None:
    rule = Rule("/etc/**/secret")
    assert rule.matches(b"etc/secret", is_dir=False)
    assert rule.matches(b"etc/a/secret", is_dir=False)
    assert rule.matches(b"etc/a/b/c/secret", is_dir=False)
    assert not rule.matches(b"etc/a/notsecret", is_dir=False)
    assert not rule.matches(b"srv/a/secret", is_dir=False)


def test_leading_double_star_matches_at_any_depth() -> None:
    rule = Rule("**/id_rsa")
    assert rule.matches(b"id_rsa", is_dir=False)
    assert rule.matches(b"etc/a/id_rsa", is_dir=False)
    assert not rule.matches(b"etc/a/id_rsa.pub", is_dir=False)


def test_trailing_double_star_matches_everything_inside() -> None:
    rule = Rule("/etc/private/**")
    assert rule.matches(b"etc/private/a", is_dir=False)
    assert rule.matches(b"etc/private/a/b/c", is_dir=False)
    assert not rule.matches(b"etc/private", is_dir=True)
    assert not rule.matches(b"etc/privateer", is_dir=False)


def test_double_star_inside_a_name_is_a_single_star() -> None:
    rule = Rule("/etc/a**b")
    assert rule.matches(b"etc/axyzb", is_dir=False)
    assert not rule.matches(b"etc/ax/yb", is_dir=False)


def test_character_classes() -> None:
    positive = Rule("/etc/file[abc]")
    assert positive.matches(b"etc/filea", is_dir=False)
    assert not positive.matches(b"etc/filed", is_dir=False)
    negative = Rule("/etc/file[!abc]")
    assert negative.matches(b"etc/filed", is_dir=False)
    assert negative.matches(b"etc/file1", is_dir=False)
    assert not negative.matches(b"etc/filea", is_dir=False)
    assert not negative.matches(b"etc/filec", is_dir=False)
    assert not negative.matches(b"etc/file", is_dir=False)
    ranged = Rule("*.[0-9]")
    assert ranged.matches(b"etc/log.1", is_dir=False)
    assert not ranged.matches(b"etc/log.x", is_dir=False)


def test_negated_character_class_does_not_match_a_slash() -> None:
    assert not Rule("a[!x]b").matches(b"etc/a/b", is_dir=False)
    assert not Rule("/etc/a[!x]b").matches(b"etc/a/b", is_dir=False)


def test_backslash_escapes_a_special_character() -> None:
    rule = Rule("/etc/\\*literal")
    assert rule.matches(b"etc/*literal", is_dir=False)
    assert not rule.matches(b"etc/xliteral", is_dir=False)
    bang = Rule("\\!important")
    assert not bang.negate
    assert bang.matches(b"etc/!important", is_dir=False)


def test_regex_metacharacters_are_literal() -> None:
    rule = Rule("/etc/a.b+c(d)")
    assert rule.matches(b"etc/a.b+c(d)", is_dir=False)
    assert not rule.matches(b"etc/axb+c(d)", is_dir=False)


@pytest.mark.parametrize("pattern", ["[abc", "/etc/x[", "foo\\", "!", "/", "!/"])
def test_invalid_patterns_raise_pattern_error(pattern: str) -> None:
    with pytest.raises(PatternError):
        Rule(pattern)


def test_pattern_error_messages_say_why() -> None:
    with pytest.raises(PatternError, match="unclosed"):
        Rule("[abc")
    with pytest.raises(PatternError, match="lone backslash"):
        Rule("foo\\")


# --- SyncSet ---------------------------------------------------------------


def test_negation_last_match_wins() -> None:
    s = syncset(["/etc"], "/etc/hosts", "!/etc/hosts")
    assert s.covers(b"etc/hosts", is_dir=False)
    s = syncset(["/etc"], "!/etc/hosts", "/etc/hosts")
    assert not s.covers(b"etc/hosts", is_dir=False)
    s = syncset(["/etc"], "*.conf", "!/etc/keep.conf")
    assert s.covers(b"etc/keep.conf", is_dir=False)
    assert not s.covers(b"etc/drop.conf", is_dir=False)
    assert not s.covers(b"etc/a/keep.conf", is_dir=False)


def test_excluded_checks_only_the_path_itself() -> None:
    s = syncset(["/etc"], "/etc/network/")
    assert s.excluded(b"etc/network", is_dir=True)
    assert not s.excluded(b"etc/network/interfaces", is_dir=False)
    assert not s.covers(b"etc/network/interfaces", is_dir=False)


def test_nothing_below_an_excluded_directory_can_be_re_included() -> None:
    s = syncset(["/etc"], "/etc/network/", "!/etc/network/interfaces", "!interfaces")
    assert not s.covers(b"etc/network", is_dir=True)
    assert not s.covers(b"etc/network/interfaces", is_dir=False)
    assert not s.covers(b"etc/network/if-up.d/x", is_dir=False)
    # the rule is dir-only: a file named so is still covered
    assert s.covers(b"etc/network", is_dir=False)


def test_excluded_directory_can_itself_be_re_included() -> None:
    s = syncset(["/etc"], "/etc/network/", "!/etc/network/")
    assert s.covers(b"etc/network", is_dir=True)
    assert s.covers(b"etc/network/interfaces", is_dir=False)


def test_contents_excluded_but_one_file_re_included() -> None:
    s = syncset(["/etc"], "/etc/network/*", "!/etc/network/interfaces")
    assert s.covers(b"etc/network", is_dir=True)
    assert s.covers(b"etc/network/interfaces", is_dir=False)
    assert not s.covers(b"etc/network/other", is_dir=False)


def test_covers_requires_a_top() -> None:
    s = syncset(["/etc", "/var/lib/bm-ca/ca-cert.pem"])
    assert s.covers(b"etc", is_dir=True)
    assert s.covers(b"etc/a/b", is_dir=False)
    assert s.covers(b"var/lib/bm-ca/ca-cert.pem", is_dir=False)
    assert not s.covers(b"var/lib/bm-ca/other", is_dir=False)
    assert not s.covers(b"var/lib/bm-ca", is_dir=True)
    assert not s.covers(b"etcetera", is_dir=False)
    assert not s.covers(b"srv/x", is_dir=False)


def test_build_dedupes_nested_tops() -> None:
    s = syncset(["/etc", "/etc/aliases", "/etc/ssl/certs/bm_cert.pem", "/etc"])
    assert s.tops == (b"etc",)
    s = syncset(["/etc/aliases", "/etc"])
    assert s.tops == (b"etc",)


def test_build_keeps_siblings_with_a_common_prefix() -> None:
    s = syncset(["/etc", "/etcetera", "/etc2/x"])
    assert s.tops == (b"etc", b"etc2/x", b"etcetera")


def test_build_root_is_the_empty_top() -> None:
    s = syncset(["/", "/etc", "/usr/share/x.yml"])
    assert s.tops == (b"",)
    assert s.covers(b"anything/at/all", is_dir=False)
    assert s.top_of(b"etc/x") == b""


def test_build_strips_trailing_slashes() -> None:
    assert syncset(["/etc/"]).tops == (b"etc",)


def test_top_of() -> None:
    s = syncset(["/etc", "/usr/share/bm-elasticsearch/config/elasticsearch.yml"])
    assert s.top_of(b"etc/x/y") == b"etc"
    top = b"usr/share/bm-elasticsearch/config/elasticsearch.yml"
    assert s.top_of(top) == top
    assert s.top_of(b"usr/share") is None


def test_is_implied_for_directories_above_a_top() -> None:
    s = syncset(["/etc", "/usr/share/bm-elasticsearch/config/elasticsearch.yml"])
    assert s.is_implied(b"usr")
    assert s.is_implied(b"usr/share")
    assert s.is_implied(b"usr/share/bm-elasticsearch")
    assert s.is_implied(b"usr/share/bm-elasticsearch/config")
    assert not s.is_implied(b"usr/share/bm-elasticsearch/config/elasticsearch.yml")
    assert not s.is_implied(b"etc")
    assert not s.is_implied(b"etc/x")
    assert not s.is_implied(b"usr/lib")
    assert not s.is_implied(b"us")


# --- the BlueMind preset through the configuration -------------------------


def bluemind_config(root: Path, exclude: list[str] | None = None) -> Config:
    text = f"node: bm1\nsync:\n  root: {root}\n"
    if exclude:
        text += "  exclude:\n" + "".join(f"    - '{p}'\n" for p in exclude)
    return parse(text, Path("/etc/bmsync/bmsync.yaml"))


@pytest.fixture
def bluemind(tmp_path: Path) -> SyncSet:
    return bluemind_config(tmp_path).syncset()


def test_bluemind_tops(bluemind: SyncSet) -> None:
    assert bluemind.tops == (
        b"etc",
        b"usr/share/bm-elasticsearch/config/elasticsearch.yml",
        b"var/lib/bm-ca/ca-cert.pem",
    )


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        (b"etc/hostname", False),
        (b"etc/machine-id", False),
        (b"etc/hosts", False),
        (b"etc/fstab", False),
        (b"etc/ssh/ssh_host_ed25519_key", False),
        (b"etc/ssh/ssh_host_ed25519_key.pub", False),
        (b"etc/network", True),
        (b"etc/network/interfaces", False),
        (b"etc/netplan/50-cloud-init.yaml", False),
        (b"etc/bmsync", True),
        (b"etc/bmsync/bmsync.yaml", False),
        (b"etc/keepalived/keepalived.conf", False),
        (b"etc/foo.conf.swp", False),
        (b"etc/postfix/.main.cf.swp", False),
        (b"etc/apt/sources.list.dpkg-new", False),
        (b"etc/default/grub.ucf-dist", False),
        (b"etc/postfix/main.cf~", False),
        (b"etc/vim/4913", False),
        (b"etc/.bmsync-tmp.abcd", False),
        (b"etc/postfix/.bmsync-tmp.1234", False),
        (b"var/lib/bm-ca/other", False),
        (b"var/lib/bm-ca", True),
        (b"usr/share/bm-elasticsearch/config/jvm.options", False),
        (b"srv/anything", False),
    ],
)
def test_bluemind_preset_leaves_out(bluemind: SyncSet, path: bytes, is_dir: bool) -> None:
    assert not bluemind.covers(path, is_dir)


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        (b"etc", True),
        (b"etc/postfix", True),
        (b"etc/postfix/main.cf", False),
        (b"etc/ssh/sshd_config", False),
        (b"etc/ssh", True),
        (b"etc/aliases", False),
        (b"etc/aliases.db", False),
        (b"etc/sysctl.conf", False),
        (b"usr/share/bm-elasticsearch/config/elasticsearch.yml", False),
        (b"var/lib/bm-ca/ca-cert.pem", False),
        (b"etc/ssl/certs/bm_cert.pem", False),
        (b"etc/bm/bm.ini", False),
        (b"etc/x/hostname", False),
        (b"etc/network", False),
    ],
)
def test_bluemind_preset_keeps(bluemind: SyncSet, path: bytes, is_dir: bool) -> None:
    assert bluemind.covers(path, is_dir)


def test_bluemind_implied_directories(bluemind: SyncSet) -> None:
    for path in (b"usr", b"usr/share", b"var", b"var/lib", b"var/lib/bm-ca"):
        assert bluemind.is_implied(path)
    assert not bluemind.is_implied(b"etc")


def test_user_negation_re_includes_a_preset_exclude(tmp_path: Path) -> None:
    s = bluemind_config(tmp_path, ["!/etc/hosts"]).syncset()
    assert s.covers(b"etc/hosts", is_dir=False)
    assert not s.covers(b"etc/hostname", is_dir=False)


def test_user_exclude_adds_to_the_preset(tmp_path: Path) -> None:
    s = bluemind_config(tmp_path, ["/etc/postfix/"]).syncset()
    assert not s.covers(b"etc/postfix/main.cf", is_dir=False)
    assert s.covers(b"etc/aliases", is_dir=False)


def test_user_cannot_re_include_bmsync_temporary_files(tmp_path: Path) -> None:
    s = bluemind_config(tmp_path, ["!.bmsync-tmp.*"]).syncset()
    assert not s.covers(b"etc/.bmsync-tmp.abcd", is_dir=False)


def test_user_cannot_re_include_inside_an_excluded_preset_directory(tmp_path: Path) -> None:
    s = bluemind_config(tmp_path, ["!/etc/network/interfaces"]).syncset()
    assert not s.covers(b"etc/network/interfaces", is_dir=False)


def test_preset_none_has_no_tops_or_rules_but_builtins(tmp_path: Path) -> None:
    text = f"node: bm1\nsync:\n  preset: none\n  root: {tmp_path}\n  paths: [/srv/conf]\n"
    s = parse(text, Path("/etc/bmsync/bmsync.yaml")).syncset()
    assert s.tops == (b"srv/conf",)
    assert s.covers(b"srv/conf/hostname", is_dir=False)
    assert not s.covers(b"srv/conf/.bmsync-tmp.x", is_dir=False)
    assert not s.covers(b"etc/aliases", is_dir=False)
