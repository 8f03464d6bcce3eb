package partition

import (
	"errors"
	"hash/fnv"
	"strconv"
	"strings"
	"testing"
)

// kafkaMurmur2Vectors are the published test vectors of Kafka's
// UtilsTest.testMurmur2 (clients/src/test/java/org/apache/kafka/common/utils/
// UtilsTest.java), checked against apache/kafka at commit
// f55581dc73953c3509a4702433aeeeddc2970779.
var kafkaMurmur2Vectors = []struct {
	key  string
	want int32
}{
	{"21", -973932308},
	{"foobar", -790332482},
	{"a-little-bit-long-string", -985981536},
	{"a-little-bit-longer-string", -1486304829},
	{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
	{"abc", 479470107},
}

func TestMurmur2HashKafkaVectors(t *testing.T) {
	for _, tc := range kafkaMurmur2Vectors {
		t.Run(tc.key, func(t *testing.T) {
			if got := Murmur2Hash([]byte(tc.key)); got != tc.want {
				t.Errorf("Murmur2Hash(%q) = %d, want %d (Kafka Utils.murmur2)", tc.key, got, tc.want)
			}
		})
	}
}

// TestMurmur2HashOtherVectors covers the tail lengths the Kafka vectors leave
// out (1 trailing byte) and the empty key, with values other Kafka-compatible
// clients publish as produced by Kafka's Utils.murmur2 (Akka's Murmur2Spec,
// and librdkafka's partitioner test for the empty key, 0x106e08d9 after
// clearing the sign bit).
func TestMurmur2HashOtherVectors(t *testing.T) {
	tests := []struct {
		key  string
		want int32
	}{
		{"1", -1993445489},
		{"12", 126087238},
		{"123", -267702483},
		{"1234", -1614185708},
		{"12345", -1188365604},
		{"", 0x106e08d9},
	}
	for _, tc := range tests {
		if got := Murmur2Hash([]byte(tc.key)); got != tc.want {
			t.Errorf("Murmur2Hash(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
}

// TestMurmur2PartitionKafkaFormula checks the partition of the published Kafka
// vectors against Kafka's BuiltInPartitioner.partitionForKey formula,
// toPositive(murmur2(key)) % numPartitions, evaluated on the published hash.
func TestMurmur2PartitionKafkaFormula(t *testing.T) {
	for _, tc := range kafkaMurmur2Vectors {
		for _, p := range []int{1, 2, 3, 6, 12, 16, 100, 1000, 1 << 20} {
			want := int(tc.want&0x7fffffff) % p
			if got := Murmur2.Partition([]byte(tc.key), p); got != want {
				t.Errorf("Murmur2.Partition(%q, %d) = %d, want %d", tc.key, p, got, want)
			}
		}
	}
}

// goldenPartitionCounts are the partition counts of the golden tables.
var goldenPartitionCounts = [4]int{1, 3, 16, 1000}

// golden holds, for each key, its partition under Murmur2 and FNV1a for each
// of goldenPartitionCounts, and its 32-bit FNV-1a hash.
//
// These values must NEVER change. A partitioner is stable forever: changing
// its output moves users' keys to other partitions, which breaks per-key
// ordering for every existing stream (and, for murmur2, compatibility with
// Kafka). If this test fails, the change to the partitioner is the bug, not
// this table.
var golden = []struct {
	key     string
	murmur2 [4]int
	fnv1a   [4]int
	fnvHash uint32
}{
	{"", [4]int{0, 0, 9, 681}, [4]int{0, 1, 5, 261}, 0x811c9dc5},
	{"a", [4]int{0, 1, 12, 524}, [4]int{0, 1, 12, 220}, 0xe40c292c},
	{"21", [4]int{0, 0, 12, 340}, [4]int{0, 1, 12, 844}, 0x8cf297ec},
	{"abc", [4]int{0, 0, 11, 107}, [4]int{0, 2, 11, 331}, 0x1a47e90b},
	{"abcd", [4]int{0, 2, 4, 100}, [4]int{0, 1, 13, 533}, 0xce3479bd},
	{"foobar", [4]int{0, 0, 14, 166}, [4]int{0, 1, 8, 720}, 0xbf9cf968},
	{"user-42", [4]int{0, 1, 12, 460}, [4]int{0, 0, 11, 499}, 0x026073ab},
	{"order:9f1c2e7a", [4]int{0, 2, 5, 581}, [4]int{0, 2, 5, 61}, 0x1e48cb15},
	{"日本語-キー", [4]int{0, 0, 11, 347}, [4]int{0, 0, 8, 272}, 0x03e02d28},
	{"émoji-🚀", [4]int{0, 1, 1, 129}, [4]int{0, 2, 12, 700}, 0x222e0a8c},
	{strings.Repeat("0123456789", 10), [4]int{0, 2, 9, 513}, [4]int{0, 1, 13, 957}, 0x93ff86dd},
	{"\x00\xff\x80\x7f", [4]int{0, 0, 11, 699}, [4]int{0, 2, 13, 509}, 0x754585cd},
}

func TestMurmur2Golden(t *testing.T) {
	for _, g := range golden {
		for i, p := range goldenPartitionCounts {
			if got := Murmur2.Partition([]byte(g.key), p); got != g.murmur2[i] {
				t.Errorf("Murmur2.Partition(%q, %d) = %d, want golden %d", g.key, p, got, g.murmur2[i])
			}
		}
	}
}

func TestFNV1aGolden(t *testing.T) {
	for _, g := range golden {
		if got := fnv1a32([]byte(g.key)); got != g.fnvHash {
			t.Errorf("fnv1a32(%q) = %#x, want golden %#x", g.key, got, g.fnvHash)
		}
		for i, p := range goldenPartitionCounts {
			if got := FNV1a.Partition([]byte(g.key), p); got != g.fnv1a[i] {
				t.Errorf("FNV1a.Partition(%q, %d) = %d, want golden %d", g.key, p, got, g.fnv1a[i])
			}
		}
	}
}

// TestFNV1aMatchesHashFNV checks the partitioner against the standard
// library's FNV-1a.
func TestFNV1aMatchesHashFNV(t *testing.T) {
	keys := []string{"", "a", "foobar", "user-42", "日本語", strings.Repeat("x", 1000)}
	for i := range 500 {
		keys = append(keys, "key-"+strconv.Itoa(i))
	}
	for _, k := range keys {
		h := fnv.New32a()
		h.Write([]byte(k))
		want := h.Sum32()
		if got := fnv1a32([]byte(k)); got != want {
			t.Fatalf("fnv1a32(%q) = %#x, hash/fnv gives %#x", k, got, want)
		}
		for _, p := range []int{1, 3, 16, 1000, 65536} {
			if got, want := FNV1a.Partition([]byte(k), p), int(want%uint32(p)); got != want {
				t.Fatalf("FNV1a.Partition(%q, %d) = %d, want %d", k, p, got, want)
			}
		}
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		p    Partitioner
		want string
	}{
		{Murmur2, "murmur2"},
		{FNV1a, "fnv1a"},
		{Default, "murmur2"},
	}
	for _, tc := range tests {
		if got := tc.p.Name(); got != tc.want {
			t.Errorf("Name() = %q, want %q", got, tc.want)
		}
	}
}

func TestDefaultIsMurmur2(t *testing.T) {
	var d Partitioner = Default
	if d != Partitioner(Murmur2) {
		t.Fatalf("Default = %#v, want Murmur2", Default)
	}
}

func TestByName(t *testing.T) {
	for _, want := range []Partitioner{Murmur2, FNV1a, Default} {
		got, err := ByName(want.Name())
		if err != nil {
			t.Fatalf("ByName(%q): %v", want.Name(), err)
		}
		if got != want {
			t.Errorf("ByName(%q) = %#v, want %#v", want.Name(), got, want)
		}
	}
}

func TestByNameUnknown(t *testing.T) {
	for _, name := range []string{"", "murmur3", "Murmur2", "FNV1a", " murmur2", "crc32"} {
		p, err := ByName(name)
		if !errors.Is(err, ErrUnknownPartitioner) {
			t.Errorf("ByName(%q) error = %v, want one wrapping ErrUnknownPartitioner", name, err)
		}
		if p != nil {
			t.Errorf("ByName(%q) = %#v, want nil", name, p)
		}
		if err != nil && !strings.Contains(err.Error(), strconv.Quote(name)) {
			t.Errorf("ByName(%q) error %q does not name the partitioner", name, err)
		}
	}
}

func TestPartitionPanicsOnNonPositiveCount(t *testing.T) {
	for _, p := range []Partitioner{Murmur2, FNV1a} {
		for _, n := range []int{0, -1, -1000} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s.Partition(key, %d) did not panic", p.Name(), n)
					}
				}()
				p.Partition([]byte("key"), n)
			}()
		}
	}
}

// TestPartitionHugeCount checks that partition counts beyond the hash range
// still give in-range, exact results (the hash itself).
func TestPartitionHugeCount(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("needs 64-bit int")
	}
	shift := 32 // a variable, so that this compiles where int is 32 bits
	huge := 1<<shift + 5
	key := []byte("user-42")
	if got, want := Murmur2.Partition(key, huge), int(uint32(Murmur2Hash(key))&0x7fffffff); got != want {
		t.Errorf("Murmur2.Partition(key, %d) = %d, want %d", huge, got, want)
	}
	if got, want := FNV1a.Partition(key, huge), int(fnv1a32(key)); got != want {
		t.Errorf("FNV1a.Partition(key, %d) = %d, want %d", huge, got, want)
	}
}

func TestPartitionDoesNotAllocate(t *testing.T) {
	key := []byte("order:9f1c2e7a-user-42-with-a-somewhat-longer-key")
	for _, p := range []Partitioner{Murmur2, FNV1a, Default} {
		allocs := testing.AllocsPerRun(1000, func() {
			_ = p.Partition(key, 16)
		})
		if allocs != 0 {
			t.Errorf("%s.Partition allocates %v times per call, want 0", p.Name(), allocs)
		}
	}
	if allocs := testing.AllocsPerRun(1000, func() { _ = Murmur2Hash(key) }); allocs != 0 {
		t.Errorf("Murmur2Hash allocates %v times per call, want 0", allocs)
	}
}

// TestUniformity spreads 100,000 keys "key-%d" over 16 partitions and checks
// that every partition gets within 10% of the mean. The keys are fixed, so
// the test is deterministic.
func TestUniformity(t *testing.T) {
	const (
		keys       = 100_000
		partitions = 16
		mean       = keys / partitions
		tolerance  = mean / 10
	)
	for _, p := range []Partitioner{Murmur2, FNV1a} {
		t.Run(p.Name(), func(t *testing.T) {
			var counts [partitions]int
			buf := make([]byte, 0, 32)
			for i := range keys {
				buf = strconv.AppendInt(append(buf[:0], "key-"...), int64(i), 10)
				counts[p.Partition(buf, partitions)]++
			}
			for part, n := range counts {
				if n < mean-tolerance || n > mean+tolerance {
					t.Errorf("partition %d got %d keys, want %d ± %d (counts %v)", part, n, mean, tolerance, counts)
				}
			}
		})
	}
}

func BenchmarkMurmur2Partition(b *testing.B) {
	for _, size := range []int{8, 36, 256} {
		key := []byte(strings.Repeat("k", size))
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var p Partitioner = Murmur2
			sink := 0
			for b.Loop() {
				sink += p.Partition(key, 16)
			}
			_ = sink
		})
	}
}

func BenchmarkFNV1aPartition(b *testing.B) {
	for _, size := range []int{8, 36, 256} {
		key := []byte(strings.Repeat("k", size))
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var p Partitioner = FNV1a
			sink := 0
			for b.Loop() {
				sink += p.Partition(key, 16)
			}
			_ = sink
		})
	}
}
