"""What a trained run's G and F do: per-class weights, saturation, agreement with a known
map, F's output range, the meta-gradient's scale (``tdfusion inspect``), and the
finite-difference probe of the meta objective's credit (:mod:`.credit`)."""
