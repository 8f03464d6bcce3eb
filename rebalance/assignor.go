package rebalance

import (
	"cmp"
	"slices"
)

// Assignment maps member ID -> the sorted partitions it owns.
//
// An Assignment returned by Assign is well formed: every partition in
// 0..P-1 appears in exactly one slice, every slice is sorted ascending and
// non-nil, and only live members appear as keys. Assignments given to this
// package as input (a previous assignment read back from storage, say) may be
// malformed; see Owner for how a partition listed by several members, or
// listed more than once, is resolved.
type Assignment map[string][]int

// Owner returns the member that owns partition p and whether p is owned at
// all. When several members list p (a malformed assignment), the owner is the
// lexicographically smallest of them, the canonical owner that Assign, Moves
// and MinMoves also use. Slices need not be sorted.
func (a Assignment) Owner(p int) (string, bool) {
	var owner string
	found := false
	for m, ps := range a {
		if found && m >= owner {
			continue
		}
		if slices.Contains(ps, p) {
			owner, found = m, true
		}
	}
	return owner, found
}

// Clone returns a deep copy of a. The clone of a nil Assignment is nil; a nil
// slice is cloned as an empty, non-nil slice.
func (a Assignment) Clone() Assignment {
	if a == nil {
		return nil
	}
	c := make(Assignment, len(a))
	for m, ps := range a {
		c[m] = append(make([]int, 0, len(ps)), ps...)
	}
	return c
}

// Equal reports whether a and b have the same members, each with the same
// partitions in the same order. A nil slice equals an empty one, and a nil
// Assignment equals an empty one, but a member mapped to no partitions is
// not equal to an absent member.
func (a Assignment) Equal(b Assignment) bool {
	if len(a) != len(b) {
		return false
	}
	for m, ps := range a {
		qs, ok := b[m]
		if !ok || !slices.Equal(ps, qs) {
			return false
		}
	}
	return true
}

// Assign returns the assignment of partitions 0..partitions-1 over members,
// starting from prev. It is a pure, deterministic function of its inputs: the
// order of members, the iteration order of prev and the order within prev's
// slices do not matter, and neither prev nor members is modified.
//
// Members are deduplicated and sorted by ID. With M live members and P
// partitions, every member gets floor(P/M) or ceil(P/M) partitions; each
// appears in the result, possibly with an empty non-nil slice. Members absent
// from members (dead members) get nothing and do not appear. M == 0 gives an
// empty Assignment; partitions <= 0 gives every member an empty slice.
//
// Previous ownership is read as follows: entries outside 0..partitions-1 are
// ignored, and a partition listed by several members belongs to the
// lexicographically smallest of them (its canonical owner, see Owner), even
// if that member is dead; the other listings are ignored.
//
// The result moves as few partitions as possible (see Moves and MinMoves):
//
//  1. Quotas: the P mod M ceil quotas go to the live members that previously
//     owned the most partitions, ties broken by ascending member ID; the
//     others get the floor quota.
//  2. Keep: every live member keeps its lowest-numbered previous partitions,
//     up to its quota.
//  3. Fill: the remaining partitions (unowned, owned by dead members, or
//     beyond a live member's quota) are handed out in ascending order to the
//     members below quota, taken in ascending member ID, each filled up to
//     its quota before the next.
//
// Keeping min(prev_i, quota_i) partitions per member is the most that any
// balanced assignment can keep, and giving the larger quotas to the larger
// previous counts maximizes that sum (an exchange argument: when
// prev_a >= prev_b and quota_a < quota_b, swapping the quotas never lowers
// min(prev_a, quota_a) + min(prev_b, quota_b)). So the moves are minimal; a
// balanced, well-formed prev is returned unchanged.
//
// The cost is O(P + E + K log K + M log M) for E entries over K members in
// prev.
func Assign(prev Assignment, members []string, partitions int) Assignment {
	live := liveMembers(members)
	out := make(Assignment, len(live))
	if len(live) == 0 {
		return out
	}
	p := max(partitions, 0)

	// Canonical previous owner of every partition, as an index into keys
	// (prev's members sorted by ID), or -1 when unowned. Visiting the keys in
	// ascending order and keeping the first claim makes the smallest ID win.
	keys := make([]string, 0, len(prev))
	for m := range prev {
		keys = append(keys, m)
	}
	slices.Sort(keys)
	owner := make([]int32, p)
	for i := range owner {
		owner[i] = -1
	}
	for k, m := range keys {
		for _, q := range prev[m] {
			if q >= 0 && q < p && owner[q] < 0 {
				owner[q] = int32(k)
			}
		}
	}

	// Map the previous owners to live members (-1: dead) and count what each
	// live member previously owned.
	index := make(map[string]int, len(live))
	for i, m := range live {
		index[m] = i
	}
	liveOf := make([]int32, len(keys))
	for k, m := range keys {
		liveOf[k] = -1
		if i, ok := index[m]; ok {
			liveOf[k] = int32(i)
		}
	}
	counts := make([]int, len(live))
	for _, k := range owner {
		if k >= 0 {
			if i := liveOf[k]; i >= 0 {
				counts[i]++
			}
		}
	}

	quota := quotas(counts, p)

	// Keep, then fill. next holds the new owner (a live index) of every
	// partition; -1 marks a free one.
	next := make([]int32, p)
	kept := make([]int, len(live))
	free := make([]int, 0, p)
	for q, k := range owner {
		next[q] = -1
		if k >= 0 {
			if i := liveOf[k]; i >= 0 && kept[i] < quota[i] {
				next[q] = i
				kept[i]++
				continue
			}
		}
		free = append(free, q)
	}
	f := 0
	for i := range live {
		for ; kept[i] < quota[i]; kept[i]++ {
			next[free[f]] = int32(i)
			f++
		}
	}

	// Build the sorted slices in one ascending pass.
	lists := make([][]int, len(live))
	for i := range live {
		lists[i] = make([]int, 0, quota[i])
	}
	for q, i := range next {
		lists[i] = append(lists[i], q)
	}
	for i, m := range live {
		out[m] = lists[i]
	}
	return out
}

// Moves returns the number of partitions whose owner changed from prev to
// next: the partitions owned in next (by their canonical owner, see Owner)
// that had a canonical owner in prev, live or dead, other than their owner in
// next. Partitions unowned in prev are not moves (handing them out moves
// nothing), nor are partitions owned in prev but not in next (they no longer
// exist).
func Moves(prev, next Assignment) int {
	before := canonical(prev)
	moves := 0
	for q, m := range canonical(next) {
		if o, ok := before[q]; ok && o != m {
			moves++
		}
	}
	return moves
}

// MinMoves returns the fewest partition moves (as counted by Moves) by which
// any balanced assignment of partitions over members can be reached from
// prev. It is computed from the counting argument alone, independently of
// Assign: with c_i the number of partitions in 0..partitions-1 whose
// canonical previous owner is live member i, and quotas floor(P/M) and
// ceil(P/M) with the ceil ones given to the largest c_i, it is the number of
// previously owned partitions minus the sum of min(c_i, quota_i).
func MinMoves(prev Assignment, members []string, partitions int) int {
	partitions = max(partitions, 0)
	owned := 0
	counts := make(map[string]int)
	for q, m := range canonical(prev) {
		if q >= 0 && q < partitions {
			owned++
			counts[m]++
		}
	}
	live := liveMembers(members)
	if len(live) == 0 {
		return 0 // nothing can be assigned, so nothing moves
	}
	cs := make([]int, len(live))
	for i, m := range live {
		cs[i] = counts[m]
	}
	slices.SortFunc(cs, func(a, b int) int { return cmp.Compare(b, a) })
	base, extra := partitions/len(live), partitions%len(live)
	kept := 0
	for i, c := range cs {
		q := base
		if i < extra {
			q++
		}
		kept += min(c, q)
	}
	return owned - kept
}

// liveMembers returns members sorted by ID, without duplicates, as a new
// slice.
func liveMembers(members []string) []string {
	live := slices.Clone(members)
	slices.Sort(live)
	return slices.Compact(live)
}

// quotas returns each member's quota for p partitions: the p mod M ceil
// quotas go to the members with the largest counts, ties broken by index
// (the members being sorted by ID).
func quotas(counts []int, p int) []int {
	m := len(counts)
	base, extra := p/m, p%m
	quota := make([]int, m)
	for i := range quota {
		quota[i] = base
	}
	if extra == 0 {
		return quota
	}
	order := make([]int, m)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(counts[b], counts[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	for _, i := range order[:extra] {
		quota[i]++
	}
	return quota
}

// canonical returns the canonical owner of every partition listed in a: the
// lexicographically smallest member listing it.
func canonical(a Assignment) map[int]string {
	owners := make(map[int]string)
	for m, ps := range a {
		for _, q := range ps {
			if o, ok := owners[q]; !ok || m < o {
				owners[q] = m
			}
		}
	}
	return owners
}
