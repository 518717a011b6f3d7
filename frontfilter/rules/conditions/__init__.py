"""Conditions: the tree a rule's condition tables compile to (`tree`), and the compiler (`compile`)."""
