package partition_test

import (
	"fmt"

	"github.com/segmenter/segmenter/partition"
)

// Example resolves the partitioner recorded in a stream's metadata and routes
// a few keys; a key always lands on the same partition, the one Kafka's
// default partitioner would pick for it.
func Example() {
	p, err := partition.ByName("murmur2")
	if err != nil {
		panic(err)
	}
	for _, key := range []string{"user-42", "foobar", "user-42"} {
		fmt.Printf("%s -> %d\n", key, p.Partition([]byte(key), 16))
	}
	fmt.Println(partition.Default.Name())
	// Output:
	// user-42 -> 12
	// foobar -> 14
	// user-42 -> 12
	// murmur2
}
