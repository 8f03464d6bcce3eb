package contracts_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/segmenter/segmenter/contracts"
)

// TestGeneratedCodeIsFresh regenerates messages.pb.go into a temporary
// directory and checks that it matches the committed file byte for byte,
// but for the line naming protoc's version (another protoc makes the same
// code; protoc-gen-go's version is pinned in go.mod and checked).
func TestGeneratedCodeIsFresh(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		const msg = "protoc missing: install protobuf-compiler"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not found on PATH")
	}

	out := t.TempDir()
	cmd := exec.Command("bash", "gen.sh", out)
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh failed: %v\n%s", err, output)
	}

	got, err := os.ReadFile(filepath.Join(out, "messages.pb.go"))
	if err != nil {
		t.Fatalf("reading regenerated code: %v", err)
	}
	want, err := os.ReadFile("messages.pb.go")
	if err != nil {
		t.Fatalf("reading committed code: %v", err)
	}
	if !bytes.Equal(withoutProtocVersion(got), withoutProtocVersion(want)) {
		t.Fatal("contracts/messages.pb.go is stale: run make proto")
	}
}

// withoutProtocVersion drops the header line "// \tprotoc        vX.Y.Z".
func withoutProtocVersion(code []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(code, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("// \tprotoc ")) {
			continue
		}
		out = append(out, line)
	}
	return bytes.Join(out, []byte("\n"))
}

func TestCMessageRoundTrip(t *testing.T) {
	in := &contracts.CMessage{
		Id:            "1700000000000-0",
		PartitionKey:  "order-42",
		Data:          []byte{0x00, 0x01, 0xfe, 0xff},
		Metadata:      map[string]string{"trace-id": "abc123", "content-type": "application/json"},
		Partition:     7,
		DeliveryCount: 3,
		Epoch:         -9_000_000_000, // beyond 32 bits, and negative, to exercise the varint path
		Stream:        "segmenter:orders:p7",
		Group:         "billing",
		PoisonReason:  "unknown field layout",
	}

	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	out := new(contracts.CMessage)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("round trip mismatch:\n in: %v\nout: %v", in, out)
	}

	// Guard against a field silently dropping out of the comparison: every
	// field of the message must be populated in the fixture above.
	fields := in.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !out.ProtoReflect().Has(fd) {
			t.Errorf("field %s not set after round trip", fd.Name())
		}
	}
}
