package rebalance

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// validate checks that got is a balanced, complete assignment of partitions
// 0..p-1 over exactly the distinct members given, with sorted, non-nil
// slices.
func validate(got Assignment, members []string, p int) error {
	if got == nil {
		return fmt.Errorf("nil assignment")
	}
	live := liveMembers(members)
	if len(got) != len(live) {
		return fmt.Errorf("%d members in result, want %d: %v", len(got), len(live), got)
	}
	if len(live) == 0 {
		return nil
	}
	p = max(p, 0)
	lo, hi := p/len(live), (p+len(live)-1)/len(live)
	seen := make([]bool, p)
	for _, m := range live {
		ps, ok := got[m]
		if !ok {
			return fmt.Errorf("live member %q missing", m)
		}
		if ps == nil {
			return fmt.Errorf("member %q has a nil slice", m)
		}
		if len(ps) < lo || len(ps) > hi {
			return fmt.Errorf("member %q has %d partitions, want %d..%d", m, len(ps), lo, hi)
		}
		if !slices.IsSorted(ps) {
			return fmt.Errorf("member %q: partitions not sorted: %v", m, ps)
		}
		for _, q := range ps {
			if q < 0 || q >= p {
				return fmt.Errorf("member %q: partition %d out of range", m, q)
			}
			if seen[q] {
				return fmt.Errorf("partition %d assigned twice", q)
			}
			seen[q] = true
		}
	}
	for q, ok := range seen {
		if !ok {
			return fmt.Errorf("partition %d unassigned", q)
		}
	}
	return nil
}

func span(lo, hi int) []int {
	ps := make([]int, 0, hi-lo)
	for q := lo; q < hi; q++ {
		ps = append(ps, q)
	}
	return ps
}

func TestAssignTable(t *testing.T) {
	tests := []struct {
		name       string
		prev       Assignment
		members    []string
		partitions int
		want       Assignment
		wantMoves  int
	}{
		{
			name:       "no members",
			prev:       Assignment{"a": {0, 1}},
			members:    nil,
			partitions: 2,
			want:       Assignment{},
		},
		{
			name:       "empty members slice",
			members:    []string{},
			partitions: 5,
			want:       Assignment{},
		},
		{
			name:       "zero partitions",
			prev:       Assignment{"a": {0, 1}},
			members:    []string{"b", "a"},
			partitions: 0,
			want:       Assignment{"a": {}, "b": {}},
		},
		{
			name:       "negative partitions",
			members:    []string{"a"},
			partitions: -3,
			want:       Assignment{"a": {}},
		},
		{
			name:       "fewer partitions than members",
			members:    []string{"e", "d", "c", "b", "a"},
			partitions: 3,
			want:       Assignment{"a": {0}, "b": {1}, "c": {2}, "d": {}, "e": {}},
		},
		{
			name:       "fewer partitions than members, sticky",
			prev:       Assignment{"e": {0}, "d": {2}},
			members:    []string{"a", "b", "c", "d", "e"},
			partitions: 3,
			want:       Assignment{"a": {1}, "b": {}, "c": {}, "d": {2}, "e": {0}},
		},
		{
			name:       "fresh",
			members:    []string{"c", "a", "b"},
			partitions: 10,
			want:       Assignment{"a": span(0, 4), "b": span(4, 7), "c": span(7, 10)},
		},
		{
			name:       "fresh, duplicate members count once",
			members:    []string{"b", "a", "b", "a"},
			partitions: 5,
			want:       Assignment{"a": span(0, 3), "b": span(3, 5)},
		},
		{
			name:       "member joins: P=16, 2 to 3",
			prev:       Assignment{"a": span(0, 8), "b": span(8, 16)},
			members:    []string{"a", "b", "c"},
			partitions: 16,
			// a keeps 6 (ceil quota, tie broken by ID), b keeps 5.
			want:      Assignment{"a": span(0, 6), "b": span(8, 13), "c": {6, 7, 13, 14, 15}},
			wantMoves: 5,
		},
		{
			name:       "ceil quota goes to the largest previous owner, not the smallest ID",
			prev:       Assignment{"b": {0, 1}, "c": span(2, 7)},
			members:    []string{"a", "b", "c"},
			partitions: 7,
			// quotas 3,2,2: c (5 before) gets the 3 and keeps 2, 3, 4.
			want:      Assignment{"a": {5, 6}, "b": {0, 1}, "c": {2, 3, 4}},
			wantMoves: 2,
		},
		{
			name:       "member leaves",
			prev:       Assignment{"a": span(0, 4), "b": span(4, 8), "c": span(8, 12)},
			members:    []string{"b", "a"},
			partitions: 12,
			want:       Assignment{"a": {0, 1, 2, 3, 8, 9}, "b": {4, 5, 6, 7, 10, 11}},
			wantMoves:  4,
		},
		{
			name:       "dead member's partitions redistributed, no other moves",
			prev:       Assignment{"a": {0, 1, 2}, "b": {3, 4}, "x": {5, 6, 7}},
			members:    []string{"a", "b"},
			partitions: 8,
			want:       Assignment{"a": {0, 1, 2, 5}, "b": {3, 4, 6, 7}},
			wantMoves:  3,
		},
		{
			name:       "unowned partitions handed out, partitions grew",
			prev:       Assignment{"a": {0, 1}, "b": {2, 3}},
			members:    []string{"a", "b"},
			partitions: 8,
			want:       Assignment{"a": {0, 1, 4, 5}, "b": {2, 3, 6, 7}},
		},
		{
			name:       "partitions shrank: out-of-range entries dropped",
			prev:       Assignment{"a": {0, 1, 4, 5}, "b": {2, 3, 6, 7}},
			members:    []string{"a", "b"},
			partitions: 4,
			want:       Assignment{"a": {0, 1}, "b": {2, 3}},
		},
		{
			name:       "invalid prev: negative, out of range, duplicates, unsorted",
			prev:       Assignment{"b": {3, -1, 0, 0, 9}, "a": {2, 0, 100}, "c": {1, 3}},
			members:    []string{"a", "b", "c"},
			partitions: 4,
			// canonical owners: 0->a, 1->c, 2->a, 3->b.
			want: Assignment{"a": {0, 2}, "b": {3}, "c": {1}},
		},
		{
			name:       "duplicate owned by a dead member is freed",
			prev:       Assignment{"a": {0, 1}, "b": {0, 2, 3}},
			members:    []string{"b", "c"},
			partitions: 4,
			// 0 belongs canonically to dead a, so it moves; b keeps 2, 3.
			want:      Assignment{"b": {2, 3}, "c": {0, 1}},
			wantMoves: 2,
		},
		{
			name:       "overloaded live member keeps its lowest partitions",
			prev:       Assignment{"z": span(0, 6)},
			members:    []string{"z", "y"},
			partitions: 6,
			want:       Assignment{"y": {3, 4, 5}, "z": {0, 1, 2}},
			wantMoves:  3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.prev.Clone()
			membersBefore := slices.Clone(tt.members)
			got := Assign(tt.prev, tt.members, tt.partitions)
			if err := validate(got, tt.members, tt.partitions); err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tt.want) {
				t.Fatalf("Assign = %v, want %v", got, tt.want)
			}
			if m := Moves(tt.prev, got); m != tt.wantMoves {
				t.Errorf("Moves = %d, want %d", m, tt.wantMoves)
			}
			if m := MinMoves(tt.prev, tt.members, tt.partitions); m != tt.wantMoves {
				t.Errorf("MinMoves = %d, want %d", m, tt.wantMoves)
			}
			if !tt.prev.Equal(before) || !slices.Equal(tt.members, membersBefore) {
				t.Errorf("inputs modified")
			}
			if again := Assign(got, tt.members, tt.partitions); !again.Equal(got) {
				t.Errorf("not idempotent: %v then %v", got, again)
			}
		})
	}
}

func TestAssignmentOwner(t *testing.T) {
	a := Assignment{"b": {3, 1}, "a": {5, 1}, "c": {}}
	for _, tt := range []struct {
		p     int
		owner string
		ok    bool
	}{
		{1, "a", true}, // listed by a and b: the smallest ID wins
		{3, "b", true},
		{5, "a", true},
		{0, "", false},
		{-1, "", false},
	} {
		owner, ok := a.Owner(tt.p)
		if owner != tt.owner || ok != tt.ok {
			t.Errorf("Owner(%d) = %q, %v; want %q, %v", tt.p, owner, ok, tt.owner, tt.ok)
		}
	}
	if _, ok := Assignment(nil).Owner(0); ok {
		t.Errorf("nil assignment owns partition 0")
	}
}

func TestAssignmentCloneEqual(t *testing.T) {
	if Assignment(nil).Clone() != nil {
		t.Errorf("Clone(nil) != nil")
	}
	a := Assignment{"a": {0, 2}, "b": nil, "c": {1}}
	c := a.Clone()
	if !c.Equal(a) || !a.Equal(c) {
		t.Fatalf("clone %v not equal to %v", c, a)
	}
	if c["b"] == nil {
		t.Errorf("clone has a nil slice")
	}
	c["a"][0] = 7
	if a["a"][0] != 0 {
		t.Errorf("clone shares slices with the original")
	}
	for _, tt := range []struct {
		x, y Assignment
		want bool
	}{
		{nil, Assignment{}, true},
		{Assignment{"a": nil}, Assignment{"a": {}}, true},
		{Assignment{"a": {}}, Assignment{}, false},
		{Assignment{"a": {1}}, Assignment{"b": {1}}, false},
		{Assignment{"a": {1, 2}}, Assignment{"a": {2, 1}}, false},
		{Assignment{"a": {1}}, Assignment{"a": {1}, "b": {}}, false},
	} {
		if got := tt.x.Equal(tt.y); got != tt.want {
			t.Errorf("%v.Equal(%v) = %v, want %v", tt.x, tt.y, got, tt.want)
		}
	}
}

func TestMovesCounting(t *testing.T) {
	prev := Assignment{"a": {0, 1}, "b": {1, 2}, "x": {3, 9}}
	next := Assignment{"a": {0}, "b": {1, 2}, "c": {3, 4}}
	// 0 stays with a; 1 moves (a -> b); 2 stays; 3 moves (x -> c);
	// 4 was unowned; 9 no longer exists.
	if got := Moves(prev, next); got != 2 {
		t.Errorf("Moves = %d, want 2", got)
	}
	if got := Moves(nil, next); got != 0 {
		t.Errorf("Moves from nil = %d, want 0", got)
	}
	if got := Moves(prev, nil); got != 0 {
		t.Errorf("Moves to nil = %d, want 0", got)
	}
}

// genInput draws a random previous assignment over a member pool that
// includes dead members, and a shuffled live member list with occasional
// duplicates. The bulk data comes from a seeded PRNG so that large P stays
// cheap to generate.
func genInput(t *rapid.T, maxP, maxM, maxDead int) (prev Assignment, members []string, p int) {
	p = rapid.IntRange(1, maxP).Draw(t, "P")
	m := rapid.IntRange(1, maxM).Draw(t, "M")
	dead := rapid.IntRange(0, maxDead).Draw(t, "dead")
	seed := rapid.Uint64().Draw(t, "seed")
	rng := rand.New(rand.NewPCG(seed, 0x5e6))

	pool := make([]string, m+dead)
	for i := range pool {
		pool[i] = fmt.Sprintf("m%03d", i)
	}
	rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	live := pool[:m]

	// Previous owners: a random subset of the pool, live and dead.
	owners := slices.Clone(pool)
	rng.Shuffle(len(owners), func(i, j int) { owners[i], owners[j] = owners[j], owners[i] })
	owners = owners[:rapid.IntRange(0, len(owners)).Draw(t, "prevMembers")]

	switch rapid.IntRange(0, 2).Draw(t, "mode") {
	case 0: // nil prev
	case 1: // random, partial, skewed ownership with invalid entries
		prev = make(Assignment)
		if len(owners) == 0 {
			break
		}
		owned := rapid.Float64Range(0, 1).Draw(t, "owned")
		dup := rapid.Float64Range(0, 0.2).Draw(t, "dup")
		skew := rapid.Bool().Draw(t, "skew")
		pick := func() string {
			i := rng.IntN(len(owners))
			if skew {
				i = min(i, rng.IntN(len(owners))) // favor the first owners
			}
			return owners[i]
		}
		for q := range p {
			if rng.Float64() < owned {
				o := pick()
				prev[o] = append(prev[o], q)
				if rng.Float64() < dup {
					o = pick() // possibly the same member twice
					prev[o] = append(prev[o], q)
				}
			}
		}
		for range rapid.IntRange(0, 3).Draw(t, "outOfRange") {
			o := pick()
			q := p + rng.IntN(100)
			if rng.IntN(2) == 0 {
				q = -1 - rng.IntN(100)
			}
			prev[o] = append(prev[o], q)
		}
		for _, o := range owners {
			rng.Shuffle(len(prev[o]), func(i, j int) { prev[o][i], prev[o][j] = prev[o][j], prev[o][i] })
		}
	case 2: // a balanced assignment over the previous owners, possibly of another P
		if len(owners) > 0 {
			prevP := rapid.IntRange(1, maxP).Draw(t, "prevP")
			prev = Assign(nil, owners, prevP)
		}
	}

	members = slices.Clone(live)
	if rapid.Bool().Draw(t, "duplicates") {
		for range 1 + rng.IntN(3) {
			members = append(members, live[rng.IntN(len(live))])
		}
	}
	rng.Shuffle(len(members), func(i, j int) { members[i], members[j] = members[j], members[i] })
	return prev, members, p
}

func shuffled(rng *rand.Rand, a Assignment) Assignment {
	c := a.Clone()
	for _, ps := range c {
		rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	}
	return c
}

func TestAssignProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		prev, members, p := genInput(t, 4096, 256, 32)
		prevCopy := prev.Clone()
		membersCopy := slices.Clone(members)

		next := Assign(prev, members, p)
		if err := validate(next, members, p); err != nil {
			t.Fatal(err)
		}
		if !prev.Equal(prevCopy) || !slices.Equal(members, membersCopy) {
			t.Fatal("Assign modified its inputs")
		}

		// Determinism: member order, prev's slice order and map identity
		// do not matter.
		rng := rand.New(rand.NewPCG(uint64(p), uint64(len(members))))
		members2 := slices.Clone(members)
		rng.Shuffle(len(members2), func(i, j int) { members2[i], members2[j] = members2[j], members2[i] })
		if again := Assign(shuffled(rng, prev), members2, p); !again.Equal(next) {
			t.Fatalf("not deterministic:\n%v\n%v", next, again)
		}

		// Stickiness: exactly the minimum number of moves.
		moves, minMoves := Moves(prev, next), MinMoves(prev, members, p)
		if moves != minMoves {
			t.Fatalf("Moves = %d, MinMoves = %d", moves, minMoves)
		}

		// Idempotence: a balanced assignment is stable.
		if again := Assign(next, members, p); !again.Equal(next) {
			t.Fatalf("not idempotent")
		}
		if m := MinMoves(next, members, p); m != 0 {
			t.Fatalf("MinMoves from a balanced assignment = %d", m)
		}
	})
}

// TestMinMovesBruteForce checks the counting argument behind MinMoves (and so
// Assign's optimality) against an exhaustive search over every balanced
// assignment of a few partitions.
func TestMinMovesBruteForce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		prev, members, p := genInput(t, 7, 3, 2)
		live := liveMembers(members)
		m := len(live)
		lo, hi := p/m, (p+m-1)/m

		best := -1
		owner := make([]int, p)
		counts := make([]int, m)
		var walk func(q int)
		walk = func(q int) {
			if q == p {
				for _, c := range counts {
					if c < lo || c > hi {
						return
					}
				}
				next := make(Assignment, m)
				for i, o := range owner {
					next[live[o]] = append(next[live[o]], i)
				}
				if mv := Moves(prev, next); best < 0 || mv < best {
					best = mv
				}
				return
			}
			for i := range m {
				owner[q] = i
				counts[i]++
				walk(q + 1)
				counts[i]--
			}
		}
		walk(0)

		if got := MinMoves(prev, members, p); got != best {
			t.Fatalf("MinMoves = %d, brute force = %d (prev %v, members %v, P %d)", got, best, prev, members, p)
		}
		if got := Moves(prev, Assign(prev, members, p)); got != best {
			t.Fatalf("Assign moves %d, brute force = %d", got, best)
		}
	})
}

// TestAssignGrowShrink guards against the hextechpal/segmenter bug class
// (panics and unbalanced results when members come and go, notably when
// there are more members than partitions): for every P and M up to 32, grow
// the group from nothing one member at a time, then shrink it back.
func TestAssignGrowShrink(t *testing.T) {
	for p := 1; p <= 32; p++ {
		for m := 1; m <= 32; m++ {
			pool := make([]string, m)
			for i := range pool {
				// Interleave IDs so joins land both before and after existing ones.
				pool[i] = fmt.Sprintf("c%02d", (i*7)%m)
			}
			var prev Assignment
			step := func(members []string) {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("P=%d members=%v: panic: %v", p, members, r)
					}
				}()
				next := Assign(prev, members, p)
				if err := validate(next, members, p); err != nil {
					t.Fatalf("P=%d members=%v: %v", p, members, err)
				}
				if mv, least := Moves(prev, next), MinMoves(prev, members, p); mv != least {
					t.Fatalf("P=%d members=%v: %d moves, minimum %d", p, members, mv, least)
				}
				prev = next
			}
			for k := 1; k <= m; k++ {
				step(pool[:k])
			}
			for k := m - 1; k >= 0; k-- {
				step(pool[m-k:]) // drop the oldest members first
			}
		}
	}
}

func BenchmarkAssign(b *testing.B) {
	for _, bc := range []struct{ p, m int }{{1024, 64}, {4096, 256}} {
		b.Run(fmt.Sprintf("P=%d,M=%d", bc.p, bc.m), func(b *testing.B) {
			members := make([]string, bc.m)
			for i := range members {
				members[i] = fmt.Sprintf("consumer-%04d", i)
			}
			// A balanced group that one member has just joined.
			prev := Assign(nil, members[:bc.m-1], bc.p)
			b.ReportAllocs()
			for b.Loop() {
				Assign(prev, members, bc.p)
			}
		})
	}
}
