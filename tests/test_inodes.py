"""InodeTable: the invariants of its module docstring, example by example and as a hypothesis state
machine that drives it the way the namespace does (assign, then ref or drop_unused; forget)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vfs.inodes import ROOT_INODE, InodeTable


def looked_up(table: InodeTable, path: str, is_dir: bool = False) -> int:
    node = table.assign(path, is_dir)
    table.ref(node)
    return node.ino


def test_root_exists_and_is_never_forgotten() -> None:
    t = InodeTable()
    root = t.get(ROOT_INODE)
    assert root.path == "/" and root.is_dir
    t.forget(ROOT_INODE, 100)
    assert t.get(ROOT_INODE) is root
    t.drop_unused(root)
    assert t.get(ROOT_INODE) is root
    assert t.assign("/", True) is root


def test_lookup_counts_and_forget_to_zero_removes() -> None:
    t = InodeTable()
    ino = looked_up(t, "/f")
    assert looked_up(t, "/f") == ino
    assert t.get(ino).lookups == 2
    t.forget(ino, 1)
    assert t.get(ino).lookups == 1 and t.get(ino).path == "/f"
    t.forget(ino, 1)
    with pytest.raises(KeyError):
        t.get(ino)
    assert len(t) == 1


def test_forget_never_raises() -> None:
    t = InodeTable()
    t.forget(12345, 1)  # unknown
    ino = looked_up(t, "/f")
    t.forget(ino, 5)  # more than it holds: gone, no error
    t.forget(ino, 1)  # already gone
    with pytest.raises(KeyError):
        t.get(ino)


def test_kind_change_gets_a_new_inode_and_old_stays_for_forget() -> None:
    t = InodeTable()
    f = looked_up(t, "/x", is_dir=False)
    d = looked_up(t, "/x", is_dir=True)
    assert d != f
    assert t.get(f).path == "/x" and not t.get(f).is_dir  # still valid for forget
    assert t.assign("/x", True).ino == d
    t.forget(f, 1)
    with pytest.raises(KeyError):
        t.get(f)
    assert t.assign("/x", True).ino == d  # forgetting the old one does not unmap the new one


def test_numbers_are_never_reused() -> None:
    t = InodeTable()
    seen = set()
    for _ in range(3):
        ino = looked_up(t, "/same")
        assert ino not in seen
        seen.add(ino)
        t.forget(ino, 1)


def test_drop_unused_only_drops_nodes_without_lookups() -> None:
    t = InodeTable()
    offered = t.assign("/a", False)
    t.drop_unused(offered)  # the kernel did not take it
    with pytest.raises(KeyError):
        t.get(offered.ino)
    kept = looked_up(t, "/b")
    t.drop_unused(t.get(kept))
    assert t.get(kept).lookups == 1
    assert len(t) == 2


class InodeMachine(RuleBasedStateMachine):
    """The namespace's use of the table against a model of what the kernel holds."""

    def __init__(self) -> None:
        super().__init__()
        self.t = InodeTable()
        self.lookups: dict[int, int] = {}  # ino -> lookups the kernel holds (model)
        self.kind: dict[int, tuple[str, bool]] = {}
        self.current: dict[str, int] = {}  # path -> the ino assign() must return for its kind
        self.issued: set[int] = {ROOT_INODE}
        self.max_ino = ROOT_INODE
        self.gone: set[int] = set()

    def _assign(self, path: str, is_dir: bool) -> int:
        node = self.t.assign(path, is_dir)
        cur = self.current.get(path)
        if cur is not None and self.kind[cur][1] == is_dir and (cur in self.lookups or cur == ROOT_INODE):
            assert node.ino == cur, "a live node of that kind must be returned"
        elif node.ino not in self.issued:
            assert node.ino > self.max_ino, "numbers are never reused"
            self.issued.add(node.ino)
            self.max_ino = node.ino
        assert (node.path, node.is_dir) == (path, is_dir)
        self.kind[node.ino] = (path, is_dir)
        self.current[path] = node.ino
        return node.ino

    paths = st.sampled_from(["/a", "/b", "/a/c", "/d/e/f"])

    @rule(path=paths, is_dir=st.booleans())
    def lookup(self, path: str, is_dir: bool) -> None:
        ino = self._assign(path, is_dir)
        self.t.ref(self.t.get(ino))
        self.lookups[ino] = self.lookups.get(ino, 0) + 1

    @rule(path=paths, is_dir=st.booleans(), taken=st.booleans())
    def readdir_offer(self, path: str, is_dir: bool, taken: bool) -> None:
        ino = self._assign(path, is_dir)
        if taken:
            self.t.ref(self.t.get(ino))
            self.lookups[ino] = self.lookups.get(ino, 0) + 1
        else:
            self.t.drop_unused(self.t.get(ino))
            if ino not in self.lookups:
                self.gone.add(ino)
                if self.current.get(path) == ino:
                    del self.current[path]

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        if not self.lookups:
            return
        ino = data.draw(st.sampled_from(sorted(self.lookups)))
        n = data.draw(st.integers(1, self.lookups[ino]))
        self.t.forget(ino, n)
        self.lookups[ino] -= n
        if self.lookups[ino] == 0:
            del self.lookups[ino]
            self.gone.add(ino)
            path = self.kind[ino][0]
            if self.current.get(path) == ino:
                del self.current[path]

    @rule(ino=st.integers(0, 40), n=st.integers(1, 3))
    def forget_unknown_or_root(self, ino: int, n: int) -> None:
        if ino in self.lookups:
            return
        self.t.forget(ino, n)  # never raises, changes nothing

    @invariant()
    def table_matches_model(self) -> None:
        root = self.t.get(ROOT_INODE)
        assert root.path == "/" and root.is_dir
        for ino, n in self.lookups.items():
            node = self.t.get(ino)
            assert node.lookups == n
            assert (node.path, node.is_dir) == self.kind[ino]
        for ino in self.gone - set(self.lookups):
            with pytest.raises(KeyError):
                self.t.get(ino)
        assert len(self.t) == 1 + len(self.lookups)  # no node without a lookup lingers


InodeMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestInodeMachine = InodeMachine.TestCase
