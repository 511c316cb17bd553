"""Image-quality numbers that need only NumPy (the torch ones are in moe_model.metrics)."""
import math


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error for signals of the given peak value; inf for a zero error."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak * peak / mse)
