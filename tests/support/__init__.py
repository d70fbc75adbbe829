"""Real servers and fakes the tests start: each module owns one of them."""
