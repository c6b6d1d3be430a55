//! The iteration order of a `java.util.HashMap` / `HashSet` (JDK 17, default capacity 16,
//! load factor 0.75), which DirkDB's answers expose: `#vondrona` groups come out of a
//! `HashMap<GroupKey, …>` and a `TANISA` is displayed as its `HashSet` iterates.
//!
//! The model follows the JDK's code step by step — `putVal`, `resize` (a list bin split into
//! its low and high halves, order kept), `treeifyBin` (a bin reaching nine entries becomes a
//! red-black tree when the table has 64 buckets or more, else the table doubles),
//! `TreeNode.treeify`, `putTreeVal` (a new node is linked right after its tree parent in the
//! bin's `next` list), `balanceInsertion` and its rotations, `moveRootToFront` (the root first
//! in the list), `TreeNode.split` (a half of six entries or fewer becomes a list again, a larger
//! one is re-treeified only when the other half is not empty) — because a tree bin iterates in
//! its `next` order, not in insertion order.
//!
//! Keys are assumed distinct (each key is put once, as DirkDB does: `GroupByHelper` puts a
//! group at its first row, a duplicate `TANISA` member changes nothing). Where Java itself is
//! not deterministic — two keys of the same class with the same 32-bit hash that `compareTo`
//! cannot order, in a tree bin, ordered by `System.identityHashCode` — the later key is taken
//! as the smaller (`tieBreakOrder` answering -1).

use std::cmp::Ordering;

/// A key as `HashMap`'s tree bins compare it (`comparableClassFor`, `compareComparables`,
/// `tieBreakOrder`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JavaKey<'a> {
    /// A `java.lang.Double` (comparable: `Double.compare`).
    Double(f64),
    /// A `java.lang.String` (comparable: `String.compareTo`, over UTF-16 units).
    Str(&'a str),
    /// An object that is not `Comparable` (DirkDB's `GroupKey`).
    Opaque,
}

impl JavaKey<'_> {
    fn class_name(&self) -> &'static str {
        match self {
            JavaKey::Double(_) => "java.lang.Double",
            JavaKey::Str(_) => "java.lang.String",
            JavaKey::Opaque => "sqlTsinjo.base.util.GroupKey",
        }
    }

    /// `compareComparables(comparableClassFor(self), self, other)`: 0 when not comparable or of
    /// another class.
    fn compare_comparables(&self, other: &JavaKey<'_>) -> i32 {
        let ordering = match (self, other) {
            (JavaKey::Double(a), JavaKey::Double(b)) => java_double_compare(*a, *b),
            (JavaKey::Str(a), JavaKey::Str(b)) => a.encode_utf16().cmp(b.encode_utf16()),
            _ => Ordering::Equal,
        };
        ordering as i32
    }

    /// `tieBreakOrder(self, other)`: by class name, then identity hash (taken as -1).
    fn tie_break(&self, other: &JavaKey<'_>) -> i32 {
        match self.class_name().cmp(other.class_name()) {
            Ordering::Equal => -1,
            o => o as i32,
        }
    }
}

/// `Double.compare`: -0.0 below 0.0, NaN above everything.
fn java_double_compare(a: f64, b: f64) -> Ordering {
    match a.partial_cmp(&b) {
        Some(Ordering::Equal) | None => {
            let bits = |d: f64| {
                if d.is_nan() {
                    0x7ff8_0000_0000_0000_i64
                } else {
                    d.to_bits() as i64
                }
            };
            bits(a).cmp(&bits(b))
        }
        Some(o) => o,
    }
}

const DEFAULT_CAPACITY: usize = 16;
const TREEIFY_THRESHOLD: usize = 8;
const UNTREEIFY_THRESHOLD: usize = 6;
const MIN_TREEIFY_CAPACITY: usize = 64;

type Link = Option<usize>;

#[derive(Debug, Clone)]
struct Node {
    hash: i32,
    next: Link,
    prev: Link,
    parent: Link,
    left: Link,
    right: Link,
    red: bool,
    tree: bool,
}

/// A `HashMap` reduced to what decides its order. Node `i` is the `i`-th key put.
struct Map<'a> {
    keys: Vec<JavaKey<'a>>,
    nodes: Vec<Node>,
    table: Vec<Link>,
    size: usize,
    threshold: usize,
}

/// `HashMap.hash`: the key's `hashCode` with its high half folded into the low half.
pub fn spread(hash_code: i32) -> i32 {
    hash_code ^ ((hash_code as u32) >> 16) as i32
}

/// The order a `HashMap` (or `HashSet`) iterates these distinct keys, given as
/// `(hashCode, key)` in the order they were put: indexes into `keys`.
pub fn iteration_order(keys: &[(i32, JavaKey<'_>)]) -> Vec<usize> {
    let mut map = Map {
        keys: Vec::with_capacity(keys.len()),
        nodes: Vec::with_capacity(keys.len()),
        table: Vec::new(),
        size: 0,
        threshold: 0,
    };
    for (hash_code, key) in keys {
        map.put(spread(*hash_code), *key);
    }
    map.iterate()
}

impl<'a> Map<'a> {
    fn index(&self, hash: i32) -> usize {
        (hash as u32 as usize) & (self.table.len() - 1)
    }

    fn new_node(&mut self, hash: i32, key: JavaKey<'a>, next: Link, tree: bool) -> usize {
        self.keys.push(key);
        self.nodes.push(Node {
            hash,
            next,
            prev: None,
            parent: None,
            left: None,
            right: None,
            red: false,
            tree,
        });
        self.nodes.len() - 1
    }

    /// `putVal` of a key not in the map.
    fn put(&mut self, hash: i32, key: JavaKey<'a>) {
        if self.table.is_empty() {
            self.resize();
        }
        let i = self.index(hash);
        match self.table[i] {
            None => self.table[i] = Some(self.new_node(hash, key, None, false)),
            Some(first) if self.nodes[first].tree => self.put_tree_val(first, hash, key),
            Some(mut p) => {
                let mut bin_count = 0;
                while let Some(e) = self.nodes[p].next {
                    p = e;
                    bin_count += 1;
                }
                let x = self.new_node(hash, key, None, false);
                self.nodes[p].next = Some(x);
                if bin_count >= TREEIFY_THRESHOLD - 1 {
                    self.treeify_bin(hash);
                }
            }
        }
        self.size += 1;
        if self.size > self.threshold {
            self.resize();
        }
    }

    fn resize(&mut self) {
        let old_cap = self.table.len();
        let new_cap = if old_cap == 0 {
            DEFAULT_CAPACITY
        } else {
            old_cap * 2
        };
        self.threshold = new_cap / 4 * 3;
        let old = std::mem::replace(&mut self.table, vec![None; new_cap]);
        for (j, head) in old.into_iter().enumerate() {
            let Some(e) = head else { continue };
            if self.nodes[e].next.is_none() {
                let i = self.index(self.nodes[e].hash);
                self.table[i] = Some(e);
            } else if self.nodes[e].tree {
                self.split(e, j, old_cap);
            } else {
                let (lo, hi, _, _) = self.split_list(e, old_cap);
                self.table[j] = lo;
                self.table[j + old_cap] = hi;
            }
        }
    }

    /// Splits a bin's `next` list by `bit`, order kept: `(lo, hi, lo count, hi count)`.
    fn split_list(&mut self, head: usize, bit: usize) -> (Link, Link, usize, usize) {
        let (mut lo, mut lo_tail, mut hi, mut hi_tail) = (None, None, None, None);
        let (mut lc, mut hc) = (0, 0);
        let mut e = Some(head);
        while let Some(x) = e {
            e = self.nodes[x].next.take();
            let (head, tail, count) = if (self.nodes[x].hash as u32 as usize) & bit == 0 {
                (&mut lo, &mut lo_tail, &mut lc)
            } else {
                (&mut hi, &mut hi_tail, &mut hc)
            };
            self.nodes[x].prev = *tail;
            match *tail {
                None => *head = Some(x),
                Some(t) => self.nodes[t].next = Some(x),
            }
            *tail = Some(x);
            *count += 1;
        }
        (lo, hi, lc, hc)
    }

    /// `TreeNode.split`.
    fn split(&mut self, head: usize, index: usize, bit: usize) {
        let (lo, hi, lc, hc) = self.split_list(head, bit);
        for (half, count, other, at) in [(lo, lc, hi, index), (hi, hc, lo, index + bit)] {
            let Some(h) = half else { continue };
            if count <= UNTREEIFY_THRESHOLD {
                self.untreeify(h);
                self.table[at] = Some(h);
            } else {
                self.table[at] = Some(h);
                if other.is_some() {
                    self.treeify(h);
                }
            }
        }
    }

    fn untreeify(&mut self, head: usize) {
        let mut e = Some(head);
        while let Some(x) = e {
            let n = &mut self.nodes[x];
            n.tree = false;
            n.prev = None;
            n.parent = None;
            n.left = None;
            n.right = None;
            e = n.next;
        }
    }

    fn treeify_bin(&mut self, hash: i32) {
        if self.table.len() < MIN_TREEIFY_CAPACITY {
            self.resize();
            return;
        }
        let Some(head) = self.table[self.index(hash)] else {
            return;
        };
        let mut prev = None;
        let mut e = Some(head);
        while let Some(x) = e {
            self.nodes[x].tree = true;
            self.nodes[x].prev = prev;
            prev = Some(x);
            e = self.nodes[x].next;
        }
        self.treeify(head);
    }

    /// The direction of `x` from `p` in the tree (`treeify`, `putTreeVal`; keys distinct).
    fn direction(&self, x_hash: i32, x: usize, p: usize) -> i32 {
        let ph = self.nodes[p].hash;
        if ph > x_hash {
            -1
        } else if ph < x_hash {
            1
        } else {
            match self.keys[x].compare_comparables(&self.keys[p]) {
                0 => self.keys[x].tie_break(&self.keys[p]),
                d => d,
            }
        }
    }

    /// `TreeNode.treeify` of the list starting at `head`.
    fn treeify(&mut self, head: usize) {
        let mut root: Link = None;
        let mut e = Some(head);
        while let Some(x) = e {
            e = self.nodes[x].next;
            self.nodes[x].left = None;
            self.nodes[x].right = None;
            let Some(r) = root else {
                self.nodes[x].parent = None;
                self.nodes[x].red = false;
                root = Some(x);
                continue;
            };
            let h = self.nodes[x].hash;
            let mut p = r;
            loop {
                let dir = self.direction(h, x, p);
                let child = if dir <= 0 {
                    self.nodes[p].left
                } else {
                    self.nodes[p].right
                };
                match child {
                    Some(c) => p = c,
                    None => {
                        self.nodes[x].parent = Some(p);
                        if dir <= 0 {
                            self.nodes[p].left = Some(x);
                        } else {
                            self.nodes[p].right = Some(x);
                        }
                        root = Some(self.balance_insertion(r, x));
                        break;
                    }
                }
            }
        }
        if let Some(r) = root {
            self.move_root_to_front(r);
        }
    }

    /// `TreeNode.putTreeVal` of a key not in the tree whose first node is `first`.
    fn put_tree_val(&mut self, first: usize, hash: i32, key: JavaKey<'a>) {
        let mut root = first;
        while let Some(p) = self.nodes[root].parent {
            root = p;
        }
        let x = self.new_node(hash, key, None, true);
        let mut p = root;
        loop {
            let dir = self.direction(hash, x, p);
            let child = if dir <= 0 {
                self.nodes[p].left
            } else {
                self.nodes[p].right
            };
            if let Some(c) = child {
                p = c;
                continue;
            }
            let xpn = self.nodes[p].next;
            self.nodes[x].next = xpn;
            if dir <= 0 {
                self.nodes[p].left = Some(x);
            } else {
                self.nodes[p].right = Some(x);
            }
            self.nodes[p].next = Some(x);
            self.nodes[x].parent = Some(p);
            self.nodes[x].prev = Some(p);
            if let Some(n) = xpn {
                self.nodes[n].prev = Some(x);
            }
            let root = self.balance_insertion(root, x);
            self.move_root_to_front(root);
            return;
        }
    }

    fn move_root_to_front(&mut self, root: usize) {
        let index = self.index(self.nodes[root].hash);
        let first = self.table[index];
        if first == Some(root) {
            return;
        }
        self.table[index] = Some(root);
        let rp = self.nodes[root].prev;
        let rn = self.nodes[root].next;
        if let Some(n) = rn {
            self.nodes[n].prev = rp;
        }
        if let Some(p) = rp {
            self.nodes[p].next = rn;
        }
        if let Some(f) = first {
            self.nodes[f].prev = Some(root);
        }
        self.nodes[root].next = first;
        self.nodes[root].prev = None;
    }

    fn red(&self, n: Link) -> bool {
        n.is_some_and(|n| self.nodes[n].red)
    }

    /// `TreeNode.balanceInsertion`: the new root.
    fn balance_insertion(&mut self, mut root: usize, mut x: usize) -> usize {
        self.nodes[x].red = true;
        loop {
            let Some(mut xp) = self.nodes[x].parent else {
                self.nodes[x].red = false;
                return x;
            };
            let Some(mut xpp) = self.nodes[xp].parent.filter(|_| self.nodes[xp].red) else {
                return root;
            };
            let xppl = self.nodes[xpp].left;
            if Some(xp) == xppl {
                let xppr = self.nodes[xpp].right;
                if let Some(u) = xppr.filter(|_| self.red(xppr)) {
                    self.nodes[u].red = false;
                    self.nodes[xp].red = false;
                    self.nodes[xpp].red = true;
                    x = xpp;
                    continue;
                }
                if Some(x) == self.nodes[xp].right {
                    x = xp;
                    root = self.rotate_left(root, x);
                    let Some(p) = self.nodes[x].parent else {
                        continue;
                    };
                    xp = p;
                    let Some(pp) = self.nodes[xp].parent else {
                        self.nodes[xp].red = false;
                        continue;
                    };
                    xpp = pp;
                }
                self.nodes[xp].red = false;
                self.nodes[xpp].red = true;
                root = self.rotate_right(root, xpp);
            } else {
                if let Some(u) = xppl.filter(|_| self.red(xppl)) {
                    self.nodes[u].red = false;
                    self.nodes[xp].red = false;
                    self.nodes[xpp].red = true;
                    x = xpp;
                    continue;
                }
                if Some(x) == self.nodes[xp].left {
                    x = xp;
                    root = self.rotate_right(root, x);
                    let Some(p) = self.nodes[x].parent else {
                        continue;
                    };
                    xp = p;
                    let Some(pp) = self.nodes[xp].parent else {
                        self.nodes[xp].red = false;
                        continue;
                    };
                    xpp = pp;
                }
                self.nodes[xp].red = false;
                self.nodes[xpp].red = true;
                root = self.rotate_left(root, xpp);
            }
        }
    }

    fn rotate_left(&mut self, mut root: usize, p: usize) -> usize {
        let Some(r) = self.nodes[p].right else {
            return root;
        };
        let rl = self.nodes[r].left;
        self.nodes[p].right = rl;
        if let Some(rl) = rl {
            self.nodes[rl].parent = Some(p);
        }
        let pp = self.nodes[p].parent;
        self.nodes[r].parent = pp;
        match pp {
            None => {
                root = r;
                self.nodes[r].red = false;
            }
            Some(pp) if self.nodes[pp].left == Some(p) => self.nodes[pp].left = Some(r),
            Some(pp) => self.nodes[pp].right = Some(r),
        }
        self.nodes[r].left = Some(p);
        self.nodes[p].parent = Some(r);
        root
    }

    fn rotate_right(&mut self, mut root: usize, p: usize) -> usize {
        let Some(l) = self.nodes[p].left else {
            return root;
        };
        let lr = self.nodes[l].right;
        self.nodes[p].left = lr;
        if let Some(lr) = lr {
            self.nodes[lr].parent = Some(p);
        }
        let pp = self.nodes[p].parent;
        self.nodes[l].parent = pp;
        match pp {
            None => {
                root = l;
                self.nodes[l].red = false;
            }
            Some(pp) if self.nodes[pp].right == Some(p) => self.nodes[pp].right = Some(l),
            Some(pp) => self.nodes[pp].left = Some(l),
        }
        self.nodes[l].right = Some(p);
        self.nodes[p].parent = Some(l);
        root
    }

    /// Bucket by bucket, each bin in its `next` order.
    fn iterate(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for head in &self.table {
            let mut e = *head;
            while let Some(x) = e {
                out.push(x);
                e = self.nodes[x].next;
            }
        }
        out
    }
}

/// The order of a `HashSet` built by adding `members` in this order, then `rebuilds` times
/// again by adding its members in the order it iterates them (what a Jackson round trip does:
/// DirkDB writes a `TANISA`'s set as it iterates and reads it back with `add`): indexes into
/// `members`.
pub fn rebuilt_order(members: &[(i32, JavaKey<'_>)], rebuilds: usize) -> Vec<usize> {
    let mut order = iteration_order(members);
    for _ in 0..rebuilds {
        let again: Vec<(i32, JavaKey<'_>)> = order.iter().map(|&i| members[i]).collect();
        order = iteration_order(&again)
            .into_iter()
            .map(|j| order[j])
            .collect();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::dirkdb::values::{java_double_hash, java_string_hash};

    /// Every case of `testdata/java_hash_vectors.txt`, written by the JDK 17's own `HashMap`
    /// (`testdata/JavaHashOrder.java`), many with tree bins and treeify-driven resizes.
    #[test]
    fn iteration_order_is_the_jdks() {
        let text = include_str!("testdata/java_hash_vectors.txt");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() % 4, 0);
        let mut cases = 0;
        let mut largest = 0;
        for case in lines.chunks(4) {
            let keys: Vec<(i32, JavaKey<'_>)> = case[0]
                .split('\t')
                .map(|k| {
                    let (kind, v) = k.split_at(2);
                    match kind {
                        "d:" => {
                            let d = f64::from_bits(v.parse::<i64>().unwrap() as u64);
                            (java_double_hash(d), JavaKey::Double(d))
                        }
                        "s:" => (java_string_hash(v), JavaKey::Str(v)),
                        _ => (v.parse::<i32>().unwrap(), JavaKey::Opaque),
                    }
                })
                .collect();
            let expected: Vec<Vec<usize>> = case[1..]
                .iter()
                .map(|l| l.split(',').map(|i| i.parse().unwrap()).collect())
                .collect();
            for (rebuilds, want) in expected.iter().enumerate() {
                assert_eq!(
                    &rebuilt_order(&keys, rebuilds),
                    want,
                    "case {cases} ({} keys), {rebuilds} rebuilds: {}",
                    keys.len(),
                    case[0]
                );
            }
            largest = largest.max(keys.len());
            cases += 1;
        }
        assert_eq!(cases, 400);
        assert!(largest > 100);
    }

    #[test]
    fn a_tree_bin_iterates_in_its_next_order() {
        // Nine strings sharing the low six bits of their spread hash in a 64-bucket table: the
        // ninth makes the bin a tree, whose root moves to the front (Java's order, not the
        // insertion order a list bin would keep).
        let mut keys: Vec<String> = Vec::new();
        let mut n = 0u32;
        while keys.len() < 9 {
            let s = format!("k{n}");
            if spread(java_string_hash(&s)) & 63 == 5 {
                keys.push(s);
            }
            n += 1;
        }
        let filler: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let all: Vec<(i32, JavaKey<'_>)> = filler
            .iter()
            .chain(&keys)
            .map(|s| (java_string_hash(s), JavaKey::Str(s)))
            .collect();
        let order = iteration_order(&all);
        let bin: Vec<usize> = order.iter().copied().filter(|&i| i >= 40).collect();
        assert_ne!(bin, (40..49).collect::<Vec<_>>(), "{bin:?}");
    }
}
