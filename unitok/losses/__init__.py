"""Loss terms: each returns named ``*_loss`` terms; :mod:`unitok.losses.compose` weights and sums them."""
