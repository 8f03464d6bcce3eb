package partition

import (
	"bytes"
	"hash/fnv"
	"testing"

	"pgregory.net/rapid"
)

// TestPropertyRangeAndDeterminism checks, for every built-in partitioner and
// random keys and partition counts, that the result is in range, does not
// depend on the key's memory, and leaves the key untouched.
func TestPropertyRangeAndDeterminism(t *testing.T) {
	for _, p := range []Partitioner{Murmur2, FNV1a} {
		t.Run(p.Name(), func(t *testing.T) {
			rapid.Check(t, func(t *rapid.T) {
				key := rapid.SliceOf(rapid.Byte()).Draw(t, "key")
				n := rapid.IntRange(1, 100_000).Draw(t, "partitions")
				orig := bytes.Clone(key)

				got := p.Partition(key, n)
				if got < 0 || got >= n {
					t.Fatalf("Partition(%q, %d) = %d, out of range", key, n, got)
				}
				if again := p.Partition(key, n); again != got {
					t.Fatalf("Partition(%q, %d) gave %d then %d", key, n, got, again)
				}
				if other := p.Partition(bytes.Clone(key), n); other != got {
					t.Fatalf("Partition(%q, %d) = %d, but %d for a copy of the key", key, n, got, other)
				}
				if !bytes.Equal(key, orig) {
					t.Fatalf("Partition modified its key: %q became %q", orig, key)
				}
			})
		})
	}
}

// TestPropertyMurmur2Formula checks that the murmur2 partitioner is Kafka's
// toPositive(murmur2(key)) % numPartitions.
func TestPropertyMurmur2Formula(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		key := rapid.SliceOf(rapid.Byte()).Draw(t, "key")
		n := rapid.IntRange(1, 100_000).Draw(t, "partitions")
		want := int(Murmur2Hash(key)&0x7fffffff) % n
		if got := Murmur2.Partition(key, n); got != want {
			t.Fatalf("Murmur2.Partition(%q, %d) = %d, want %d", key, n, got, want)
		}
	})
}

// TestPropertyFNV1aFormula checks that the fnv1a partitioner is hash/fnv's
// New32a hash modulo the partition count.
func TestPropertyFNV1aFormula(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		key := rapid.SliceOf(rapid.Byte()).Draw(t, "key")
		n := rapid.IntRange(1, 100_000).Draw(t, "partitions")
		h := fnv.New32a()
		h.Write(key)
		want := int(h.Sum32() % uint32(n))
		if got := FNV1a.Partition(key, n); got != want {
			t.Fatalf("FNV1a.Partition(%q, %d) = %d, want %d", key, n, got, want)
		}
	})
}
