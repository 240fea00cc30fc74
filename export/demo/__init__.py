"""The demo world model: training on the synthetic physics world and violation-of-expectation evaluation."""
