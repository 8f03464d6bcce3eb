package contracts_test

import (
	"fmt"

	"github.com/segmenter/segmenter/contracts"
)

func ExamplePMessage() {
	msg := &contracts.PMessage{
		PartitionKey: "customer-1234",
		Data:         []byte(`{"event":"order_created"}`),
		Metadata:     map[string]string{"content-type": "application/json"},
	}
	fmt.Println(msg.GetPartitionKey())
	fmt.Println(msg.GetMetadata()["content-type"])
	// Output:
	// customer-1234
	// application/json
}
