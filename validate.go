package segmenter

// MaxNameLength is the longest namespace, stream, group or consumer name.
const MaxNameLength = 128

// validateName checks a namespace, stream, group or consumer name: 1 to
// MaxNameLength characters from [A-Za-z0-9_.-]. Other characters could break
// the key layout (':' separates key parts, braces are cluster hash tags).
func validateName(kind, name string) error {
	if name == "" {
		return invalid("%s name is empty", kind)
	}
	if len(name) > MaxNameLength {
		return invalid("%s name is %d bytes long, the maximum is %d", kind, len(name), MaxNameLength)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return invalid("%s name %q has character %q at byte %d: only A-Z a-z 0-9 _ . - are allowed", kind, name, c, i)
		}
	}
	return nil
}
