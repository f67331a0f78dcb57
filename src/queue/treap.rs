//! The order-statistic treap behind queue positions: seq -> SessionId with rank in
//! O(log n). Owns only the tree; knows nothing of sessions' states or time.

use crate::queue::SessionId;

/// An order-statistic treap: seq -> SessionId, with rank in O(log n) expected.
///
/// Hand-written because std's `BTreeMap` cannot tell how many keys precede a key without
/// walking them, and no well-kept crate offers an order-statistic map. Nodes live in an
/// arena `Vec` with a free list (no per-node allocation, no unsafe); each stores its
/// subtree size. Priorities come from a xorshift generator with a constant seed, so runs
/// are reproducible; they are independent of the keys, which keeps the expected depth
/// logarithmic even though keys arrive in increasing order. All operations are iterative,
/// so even an unluckily deep tree cannot overflow the stack.
pub(super) struct Treap {
    nodes: Vec<Node>,
    free: Vec<usize>,
    root: usize,
    rng: u64,
    /// Scratch for the nodes whose sizes must be recomputed after a split or merge.
    path: Vec<usize>,
}

const NIL: usize = usize::MAX;

struct Node {
    key: u64,
    val: SessionId,
    prio: u64,
    left: usize,
    right: usize,
    size: usize,
}

/// Where a subtree hangs: the tree root (or a local result root) or a child link.
#[derive(Clone, Copy)]
enum Slot {
    Top,
    Left(usize),
    Right(usize),
}

impl Treap {
    pub(super) fn new() -> Self {
        Treap {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            rng: 0x9E37_79B9_7F4A_7C15,
            path: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.size(self.root)
    }

    fn size(&self, i: usize) -> usize {
        if i == NIL {
            0
        } else {
            self.nodes[i].size
        }
    }

    fn next_prio(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn fix_size(&mut self, i: usize) {
        let (l, r) = (self.nodes[i].left, self.nodes[i].right);
        self.nodes[i].size = 1 + self.size(l) + self.size(r);
    }

    /// Hangs `child` at `slot`; `Top` writes to `top`.
    fn link(&mut self, slot: Slot, child: usize, top: &mut usize) {
        match slot {
            Slot::Top => *top = child,
            Slot::Left(p) => self.nodes[p].left = child,
            Slot::Right(p) => self.nodes[p].right = child,
        }
    }

    fn find(&self, key: u64) -> usize {
        let mut cur = self.root;
        while cur != NIL {
            let n = &self.nodes[cur];
            if key == n.key {
                break;
            }
            cur = if key < n.key { n.left } else { n.right };
        }
        cur
    }

    /// Inserts `key`; false (and no change) if it is already present.
    pub(super) fn insert(&mut self, key: u64, val: SessionId) -> bool {
        if self.find(key) != NIL {
            return false;
        }
        let prio = self.next_prio();
        let node = Node {
            key,
            val,
            prio,
            left: NIL,
            right: NIL,
            size: 1,
        };
        let n = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        // Walk down past higher priorities (each subtree on the way gains one node), then
        // split what is below by `key` and put the new node on top of the two halves.
        let mut slot = Slot::Top;
        let mut cur = self.root;
        while cur != NIL && self.nodes[cur].prio >= prio {
            self.nodes[cur].size += 1;
            if key < self.nodes[cur].key {
                slot = Slot::Left(cur);
                cur = self.nodes[cur].left;
            } else {
                slot = Slot::Right(cur);
                cur = self.nodes[cur].right;
            }
        }
        let (l, r) = self.split(cur, key);
        self.nodes[n].left = l;
        self.nodes[n].right = r;
        self.fix_size(n);
        let mut root = self.root;
        self.link(slot, n, &mut root);
        self.root = root;
        true
    }

    /// Removes `key`, returning its payload.
    pub(super) fn remove(&mut self, key: u64) -> Option<SessionId> {
        if self.find(key) == NIL {
            return None;
        }
        let mut slot = Slot::Top;
        let mut cur = self.root;
        while self.nodes[cur].key != key {
            self.nodes[cur].size -= 1;
            if key < self.nodes[cur].key {
                slot = Slot::Left(cur);
                cur = self.nodes[cur].left;
            } else {
                slot = Slot::Right(cur);
                cur = self.nodes[cur].right;
            }
        }
        let (l, r) = (self.nodes[cur].left, self.nodes[cur].right);
        let merged = self.merge(l, r);
        let mut root = self.root;
        self.link(slot, merged, &mut root);
        self.root = root;
        self.free.push(cur);
        Some(self.nodes[cur].val)
    }

    /// Splits subtree `t` into keys `< key` and keys `>= key`.
    fn split(&mut self, mut t: usize, key: u64) -> (usize, usize) {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let (mut l_root, mut r_root) = (NIL, NIL);
        let (mut l_slot, mut r_slot) = (Slot::Top, Slot::Top);
        while t != NIL {
            path.push(t);
            if self.nodes[t].key < key {
                // `t` with its left subtree belongs left; its right subtree is split next.
                self.link(l_slot, t, &mut l_root);
                l_slot = Slot::Right(t);
                t = self.nodes[t].right;
            } else {
                self.link(r_slot, t, &mut r_root);
                r_slot = Slot::Left(t);
                t = self.nodes[t].left;
            }
        }
        self.link(l_slot, NIL, &mut l_root);
        self.link(r_slot, NIL, &mut r_root);
        // Each node's changed child is later on the path, so sizes fix up in reverse.
        for &i in path.iter().rev() {
            self.fix_size(i);
        }
        self.path = path;
        (l_root, r_root)
    }

    /// Joins two subtrees where every key in `a` is below every key in `b`.
    fn merge(&mut self, mut a: usize, mut b: usize) -> usize {
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let mut top = NIL;
        let mut slot = Slot::Top;
        loop {
            if a == NIL {
                self.link(slot, b, &mut top);
                break;
            }
            if b == NIL {
                self.link(slot, a, &mut top);
                break;
            }
            if self.nodes[a].prio >= self.nodes[b].prio {
                self.link(slot, a, &mut top);
                path.push(a);
                slot = Slot::Right(a);
                a = self.nodes[a].right;
            } else {
                self.link(slot, b, &mut top);
                path.push(b);
                slot = Slot::Left(b);
                b = self.nodes[b].left;
            }
        }
        for &i in path.iter().rev() {
            self.fix_size(i);
        }
        self.path = path;
        top
    }

    /// Number of keys below `key`, if `key` is present.
    pub(super) fn rank(&self, key: u64) -> Option<usize> {
        let mut below = 0;
        let mut cur = self.root;
        while cur != NIL {
            let n = &self.nodes[cur];
            if key < n.key {
                cur = n.left;
            } else if key > n.key {
                below += self.size(n.left) + 1;
                cur = n.right;
            } else {
                return Some(below + self.size(n.left));
            }
        }
        None
    }

    /// The smallest key and its payload.
    pub(super) fn first(&self) -> Option<(u64, SessionId)> {
        let mut cur = self.root;
        if cur == NIL {
            return None;
        }
        while self.nodes[cur].left != NIL {
            cur = self.nodes[cur].left;
        }
        Some((self.nodes[cur].key, self.nodes[cur].val))
    }

    /// In-order (key order) traversal.
    pub(super) fn iter(&self) -> TreapIter<'_> {
        let mut it = TreapIter {
            treap: self,
            stack: Vec::new(),
        };
        it.descend_left(self.root);
        it
    }

    /// Verifies order, heap priorities, sizes and the arena accounting. Tests only.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut live = 0;
        let mut stack = vec![(self.root, None::<u64>, None::<u64>, None::<u64>)];
        while let Some((i, lo, hi, parent_prio)) = stack.pop() {
            if i == NIL {
                continue;
            }
            live += 1;
            let n = &self.nodes[i];
            assert!(lo.is_none_or(|lo| n.key > lo), "BST order");
            assert!(hi.is_none_or(|hi| n.key < hi), "BST order");
            assert!(parent_prio.is_none_or(|p| p >= n.prio), "heap order");
            assert_eq!(n.size, 1 + self.size(n.left) + self.size(n.right), "size");
            stack.push((n.left, lo, Some(n.key), Some(n.prio)));
            stack.push((n.right, Some(n.key), hi, Some(n.prio)));
        }
        assert_eq!(live, self.len());
        assert_eq!(live + self.free.len(), self.nodes.len(), "arena accounting");
    }
}

pub(super) struct TreapIter<'a> {
    treap: &'a Treap,
    stack: Vec<usize>,
}

impl TreapIter<'_> {
    fn descend_left(&mut self, mut cur: usize) {
        while cur != NIL {
            self.stack.push(cur);
            cur = self.treap.nodes[cur].left;
        }
    }
}

impl Iterator for TreapIter<'_> {
    type Item = (u64, SessionId);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.stack.pop()?;
        let n = &self.treap.nodes[i];
        self.descend_left(n.right);
        Some((n.key, n.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        // Keys in any order, not just increasing: the treap must not depend on it.
        #[test]
        fn treap_matches_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u64..64), 0..200)) {
            let mut t = Treap::new();
            let mut model = BTreeSet::new();
            for (insert, key) in ops {
                if insert {
                    prop_assert_eq!(t.insert(key, sid(key.into())), model.insert(key));
                } else {
                    prop_assert_eq!(t.remove(key), model.remove(&key).then(|| sid(key.into())));
                }
                t.check();
                for k in 0..64 {
                    prop_assert_eq!(t.rank(k), model.contains(&k).then(|| model.range(..k).count()));
                }
                prop_assert_eq!(t.first().map(|(k, _)| k), model.first().copied());
                let keys: Vec<u64> = t.iter().map(|(k, _)| k).collect();
                prop_assert_eq!(keys, model.iter().copied().collect::<Vec<_>>());
            }
        }
    }

    fn sid(n: u128) -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(n))
    }
}
