"""Side-by-side training-step benchmarks of twinsnn against SpikingJelly and snnTorch."""
