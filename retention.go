package segmenter

// retentionState is the consumer's state for detecting messages trimmed by
// retention before the group read them.
type retentionState struct{}
