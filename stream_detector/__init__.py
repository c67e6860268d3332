"""stream-detector: fake engagement, caught as it happens (see the README's module map)."""
