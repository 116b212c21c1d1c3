"""trainserve: train the D2L course's classic networks over REST, and serve them."""
