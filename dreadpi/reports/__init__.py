"""What a cycle reports after it has decided: each is optional, imported only when configured, and can change
neither the decision nor the relays (cycle._report calls them after the state is saved)."""
