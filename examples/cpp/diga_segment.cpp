// diga_segment MODEL INPUT_IMAGE OUTPUT_LABEL_PNG
//
// Labels an RGB PNG with a model exported by `diga export` (an OpenVINO IR, model.xml, or an
// ONNX, model.onnx), as diga.runtime.Segmenter does in Python:
//   1. read the model and the metadata diga stored inside it (class names, palette, the
//      inference size it was trained at, which frame graph it is): rt_info section "diga" in an
//      IR, the ONNX metadata_props (rt_info "framework") in an ONNX;
//   2. resize the image to the inference size (bilinear, as Pillow computes it: OpenVINO's CPU
//      plugin has no antialiased resize, so the frame graph of an IR takes the resized image);
//   3. infer on the CPU: the model normalises the image, runs the network, upsamples its logits
//      to the image's size and takes the argmax itself (an IR; an ONNX frame graph, whose
//      in-graph resize is onnxruntime's, gives its logits, upsampled here by the same rule);
//   4. write the train ids as an 8-bit grayscale PNG of the input's size.
// Embed it: copy the functions below; the model file is all an app needs besides OpenVINO.

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <openvino/openvino.hpp>

namespace {

struct Image {  // interleaved 8-bit pixels, `channels` per pixel
  int height = 0, width = 0, channels = 0;
  std::vector<uint8_t> data;
};

// ---------------------------------------------------------------- PNG I/O (libpng)

Image read_png_rgb(const std::string& path) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str()))
    throw std::runtime_error("cannot read " + path + ": " + png.message);
  png.format = PNG_FORMAT_RGB;  // gray, palette and alpha images are converted
  Image img{static_cast<int>(png.height), static_cast<int>(png.width), 3, {}};
  img.data.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, img.data.data(), 0, nullptr))
    throw std::runtime_error("cannot decode " + path + ": " + png.message);
  return img;
}

void write_png_gray(const std::string& path, const std::vector<uint8_t>& labels, int h, int w) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = w;
  png.height = h;
  png.format = PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&png, path.c_str(), 0, labels.data(), 0, nullptr))
    throw std::runtime_error("cannot write " + path + ": " + png.message);
}

// ---------------------------------------------------------------- metadata

struct Metadata {
  std::vector<std::string> class_names;
  std::vector<float> palette;  // (C, 3) RGB colours, for an app that draws the labels
  int inference_h = 0, inference_w = 0;  // 0: each image runs at its own size
  std::string input_kind, frame;  // "frame"; "openvino" (an IR) or "onnxruntime" (an ONNX)
};

std::string rt_string(const std::shared_ptr<ov::Model>& model, const std::string& section,
                      const std::string& key) {
  if (!model->has_rt_info(section, key))
    throw std::runtime_error("the model has no diga metadata '" + key +
                             "': export it with 'diga export'");
  return model->get_rt_info<std::string>(section, key);
}

std::vector<float> json_numbers(const std::string& text) {  // "[0.485, 0.456, 0.406]"
  std::vector<float> out;
  std::string body = text;
  std::replace(body.begin(), body.end(), ',', ' ');
  std::replace(body.begin(), body.end(), '[', ' ');
  std::replace(body.begin(), body.end(), ']', ' ');
  std::istringstream in(body);
  for (float v; in >> v;) out.push_back(v);
  return out;
}

std::vector<std::string> json_strings(const std::string& text) {  // ["road", "sidewalk"]
  std::vector<std::string> out;
  for (size_t i = text.find('"'); i != std::string::npos; i = text.find('"', i + 1)) {
    size_t end = text.find('"', i + 1);
    out.push_back(text.substr(i + 1, end - i - 1));
    i = end;
  }
  return out;
}

Metadata read_metadata(const std::shared_ptr<ov::Model>& model) {
  const std::string section = model->has_rt_info("diga") ? "diga" : "framework";  // IR : ONNX
  if (rt_string(model, section, "format") != "diga-segmentation/1")
    throw std::runtime_error("unknown metadata format: export the model with 'diga export'");
  Metadata m;
  m.class_names = json_strings(rt_string(model, section, "class_names"));
  m.palette = json_numbers(rt_string(model, section, "palette"));  // [[r, g, b], ...]
  if (m.palette.size() != m.class_names.size() * 3)
    throw std::runtime_error("the model's palette does not have a colour per class");
  m.input_kind = rt_string(model, section, "input_kind");
  if (m.input_kind != "frame" || !model->has_rt_info(section, "frame"))
    throw std::runtime_error("this app runs the frame graphs of 'diga export' (frames in, labels "
                             "out); this model is '" + m.input_kind + "': export it again");
  m.frame = rt_string(model, section, "frame");
  if (m.frame != "openvino" && m.frame != "onnxruntime")
    throw std::runtime_error("this app runs model.xml or model.onnx, not a '" + m.frame + "' graph");
  std::string size = model->has_rt_info(section, "inference_size")
                         ? rt_string(model, section, "inference_size") : "native";
  if (size != "native" && std::sscanf(size.c_str(), "%dx%d", &m.inference_h, &m.inference_w) != 2)
    throw std::runtime_error("bad inference_size '" + size + "' in the model");
  return m;
}

// ---------------------------------------------------------------- Pillow's bilinear resize
// Pillow's "reduce-aware" bilinear filter (ImagingResample): a triangle filter whose support
// grows with the downscale factor (antialiasing), applied horizontally then vertically.
// Coefficients as Pillow computes them; 8-bit images in Pillow's fixed point, float maps in
// double. Python's diga runtime resizes with Pillow, so the two see the same pixels.

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;     // per output pixel: first input pixel, count
  std::vector<double> weights;  // per output pixel: ksize weights
};

Coeffs precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // bilinear support 1
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(out_size * 2);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      k[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

constexpr int kPrecisionBits = 32 - 8 - 2;

std::vector<int> fixed_point(const Coeffs& c) {
  std::vector<int> k(c.weights.size());
  for (size_t i = 0; i < k.size(); ++i) {
    double v = c.weights[i] * (1 << kPrecisionBits);
    k[i] = static_cast<int>(v < 0 ? -0.5 + v : 0.5 + v);
  }
  return k;
}

uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

Image resize_rgb(const Image& in, int out_h, int out_w) {
  if (in.height == out_h && in.width == out_w) return in;
  const int ch = in.channels;
  Image cur = in;
  if (out_w != in.width) {  // horizontal pass
    Coeffs c = precompute(in.width, out_w);
    std::vector<int> k = fixed_point(c);
    Image out{cur.height, out_w, ch, std::vector<uint8_t>(static_cast<size_t>(cur.height) * out_w * ch)};
    for (int y = 0; y < cur.height; ++y)
      for (int xx = 0; xx < out_w; ++xx)
        for (int cc = 0; cc < ch; ++cc) {
          int64_t ss = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < c.bounds[xx * 2 + 1]; ++x)
            ss += static_cast<int64_t>(cur.data[(static_cast<size_t>(y) * cur.width + x + c.bounds[xx * 2]) * ch + cc]) *
                  k[static_cast<size_t>(xx) * c.ksize + x];
          out.data[(static_cast<size_t>(y) * out_w + xx) * ch + cc] = clip8(ss);
        }
    cur = std::move(out);
  }
  if (out_h != in.height) {  // vertical pass
    Coeffs c = precompute(in.height, out_h);
    std::vector<int> k = fixed_point(c);
    Image out{out_h, cur.width, ch, std::vector<uint8_t>(static_cast<size_t>(out_h) * cur.width * ch)};
    for (int yy = 0; yy < out_h; ++yy)
      for (int x = 0; x < cur.width; ++x)
        for (int cc = 0; cc < ch; ++cc) {
          int64_t ss = 1 << (kPrecisionBits - 1);
          for (int y = 0; y < c.bounds[yy * 2 + 1]; ++y)
            ss += static_cast<int64_t>(cur.data[(static_cast<size_t>(y + c.bounds[yy * 2]) * cur.width + x) * ch + cc]) *
                  k[static_cast<size_t>(yy) * c.ksize + y];
          out.data[(static_cast<size_t>(yy) * cur.width + x) * ch + cc] = clip8(ss);
        }
    cur = std::move(out);
  }
  return cur;
}

// Labels at (out_h, out_w) from logits (C, h, w) at the feature grid: bilinear with
// align_corners, then the argmax: the rule the frame graph and `diga eval` use.
std::vector<uint8_t> upsample_argmax(const float* logits, int classes, int h, int w, int out_h,
                                     int out_w) {
  auto axis = [](int n_in, int n_out, std::vector<int>& lo, std::vector<int>& hi,
                 std::vector<float>& frac) {
    const float ratio = static_cast<float>(n_in - 1) / static_cast<float>(std::max(n_out - 1, 1));
    for (int i = 0; i < n_out; ++i) {
      const float src = static_cast<float>(i) * ratio;
      lo[i] = std::min(static_cast<int>(std::floor(src)), n_in - 1);
      hi[i] = std::min(lo[i] + 1, n_in - 1);
      frac[i] = src - static_cast<float>(lo[i]);
    }
  };
  std::vector<int> y0(out_h), y1(out_h), x0(out_w), x1(out_w);
  std::vector<float> wy(out_h), wx(out_w);
  axis(h, out_h, y0, y1, wy);
  axis(w, out_w, x0, x1, wx);
  std::vector<float> best(static_cast<size_t>(out_h) * out_w, -INFINITY);
  std::vector<uint8_t> labels(best.size(), 0);
  for (int c = 0; c < classes; ++c) {
    const float* z = logits + static_cast<size_t>(c) * h * w;
    for (int y = 0; y < out_h; ++y) {
      const float* r0 = z + static_cast<size_t>(y0[y]) * w;
      const float* r1 = z + static_cast<size_t>(y1[y]) * w;
      for (int x = 0; x < out_w; ++x) {
        const float top = r0[x0[x]] + (r0[x1[x]] - r0[x0[x]]) * wx[x];
        const float bottom = r1[x0[x]] + (r1[x1[x]] - r1[x0[x]]) * wx[x];
        const float v = top + (bottom - top) * wy[y];
        const size_t i = static_cast<size_t>(y) * out_w + x;
        if (v > best[i]) {
          best[i] = v;
          labels[i] = static_cast<uint8_t>(c);
        }
      }
    }
  }
  return labels;
}

// ---------------------------------------------------------------- the model

std::vector<uint8_t> segment(ov::CompiledModel& compiled, const Metadata& meta, const Image& image) {
  const int run_h = meta.inference_h ? meta.inference_h : image.height;
  const int run_w = meta.inference_w ? meta.inference_w : image.width;
  Image run = resize_rgb(image, run_h, run_w);
  ov::Tensor input(ov::element::u8, {1, static_cast<size_t>(run_h), static_cast<size_t>(run_w), 3});
  std::copy(run.data.begin(), run.data.end(), input.data<uint8_t>());
  ov::Tensor sizes(ov::element::i64, {2});
  ov::InferRequest request = compiled.create_infer_request();
  request.set_tensor("image", input);
  if (meta.frame == "openvino") {  // labels at the frame's size, made in the model
    sizes.data<int64_t>()[0] = image.height;
    sizes.data<int64_t>()[1] = image.width;
    request.set_tensor("out_size", sizes);
    request.infer();
    const ov::Tensor labels = request.get_tensor("labels");  // (1, H, W) uint8
    const uint8_t* data = labels.data<const uint8_t>();
    return std::vector<uint8_t>(data, data + labels.get_size());
  }
  // an ONNX frame graph given the resized image: run_size 0x0 keeps it as it is (its own
  // antialiased resize is onnxruntime's); its feature-grid logits, upsampled here
  sizes.data<int64_t>()[0] = 0;
  sizes.data<int64_t>()[1] = 0;
  request.set_tensor("run_size", sizes);
  request.infer();
  const ov::Tensor logits = request.get_tensor("logits");  // (1, C, h, w)
  const ov::Shape shape = logits.get_shape();
  return upsample_argmax(logits.data<const float>(), static_cast<int>(shape[1]),
                         static_cast<int>(shape[2]), static_cast<int>(shape[3]), image.height,
                         image.width);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: diga_segment MODEL INPUT_IMAGE OUTPUT_LABEL_PNG\n"
                 "  MODEL: model.xml (OpenVINO IR) or model.onnx from 'diga export'\n";
    return 2;
  }
  try {
    ov::Core core;
    std::shared_ptr<ov::Model> model = core.read_model(argv[1]);
    const Metadata meta = read_metadata(model);
    // f32 where the model is float32 (CPUs with bf16 units would otherwise use bf16)
    ov::CompiledModel compiled = core.compile_model(
        model, "CPU", ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
        ov::hint::inference_precision(ov::element::f32));
    const Image image = read_png_rgb(argv[2]);
    const std::vector<uint8_t> labels = segment(compiled, meta, image);
    write_png_gray(argv[3], labels, image.height, image.width);
    std::cout << argv[3] << ": " << image.width << "x" << image.height << ", "
              << meta.class_names.size() << " classes, ran at "
              << (meta.inference_h ? std::to_string(meta.inference_h) + "x" + std::to_string(meta.inference_w)
                                   : std::string("its own size"))
              << "\n";
  } catch (const std::exception& e) {
    std::cerr << "diga_segment: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
