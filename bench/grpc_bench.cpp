#include "bench/grpc_bench.hpp"

#include <chrono>
#include <iostream>
#include <stdexcept>

#include <grpcpp/grpcpp.h>

#include "grpc_echo.grpc.pb.h"

namespace modelreg::bench {

namespace {

class echo_service final : public Echo::Service {
  grpc::Status Call(grpc::ServerContext*, const Blob* in, Blob* out) override {
    out->mutable_data()->assign(in->data().size(), '\2');
    return grpc::Status::OK;
  }
};

} // namespace

int run_grpc_echo_server(const std::string& path) {
  echo_service service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "gRPC server did not start" << std::endl;
    return 1;
  }
  std::cout << "ready" << std::endl;
  while (std::cin.get() != EOF) {
  }
  server->Shutdown();
  return 0;
}

std::vector<double> grpc_round_trips(const std::string& path, size_t bytes, size_t iterations) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel("unix:" + path, grpc::InsecureChannelCredentials(), args);
  auto stub = Echo::NewStub(channel);
  Blob request;
  request.mutable_data()->assign(bytes, '\1');
  std::vector<double> rtts;
  for (size_t i = 0; i < iterations + 2; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds{60});
    Blob reply;
    auto t0 = std::chrono::steady_clock::now();
    auto status = stub->Call(&ctx, request, &reply);
    auto dt = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (!status.ok() || reply.data().size() != bytes)
      throw std::runtime_error("gRPC echo failed: " + status.error_message());
    if (i >= 2)
      rtts.push_back(dt);
  }
  return rtts;
}

} // namespace modelreg::bench
